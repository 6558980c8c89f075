"""The local cloud: moto's server for EC2/SSM/IAM/Batch and a throwaway build host."""
