"""The build host: sshd and dockerd in a throwaway container, its package mirror and each bake's tree per AMI."""
