"""What differs between the ECS-optimized AMI families factory can start from.

One table, read by the sizing (storage driver), the render (SSM parameter, SSH user,
devices, the Python Ansible uses), the register step (the device the family boots from),
the bake (which ansible-core can manage that Python) and the roles (driver).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    key: str  # al2023 | al2 | al1
    label: str
    storage_driver: str  # overlay2 | devicemapper
    root_device: str  # the device the AMI boots from
    docker_device: str | None  # a separate Docker volume (AL1's thin pool), else None
    ssh_user: str
    ssm_x86_64: str
    ssm_arm64: str | None  # AL1 has no arm64 image
    ecs_image_type: str  # AWS Batch's ec2Configuration imageType
    base_root_gib: int  # the root volume of the ECS-optimized AMI
    python_interpreter: str  # the system Python Ansible runs its modules with on the builder
    python_label: str  # what it is, for messages
    # The first ansible-core minor release that can no longer manage that Python (its
    # "managed node" support matrix), or None while every current one can.
    ansible_core_below: tuple[int, int] | None
    base_docker_gib: int | None = None  # its separate Docker volume (AL1), else None
    data_device: str | None = None  # Docker's own data volume with `storage.grow` (None: the family cannot grow)
    ssm_agent: bool = True  # the base AMI runs the SSM agent (Session Manager can reach the builder)
    # `image.accelerator: nvidia`: the family's ECS GPU-optimized AMI (x86_64 only: AWS
    # publishes no arm64 ECS GPU AMI) and Batch's imageType for it; None: the family has none.
    ssm_nvidia_x86_64: str | None = None
    ecs_nvidia_image_type: str | None = None

    def ssm_parameter(self, architecture: str, accelerator: str = "none") -> str | None:
        """The SSM parameter naming the family's ECS-optimized AMI for the architecture and
        accelerator (`none` or `nvidia`); None when AWS publishes no such AMI
        (`no_base_reason` says why)."""
        if accelerator == "nvidia":
            return self.ssm_nvidia_x86_64 if architecture == "x86_64" else None
        if accelerator != "none":
            raise ValueError(f"unknown accelerator {accelerator!r} (one of {', '.join(ACCELERATORS)})")
        return self.ssm_arm64 if architecture == "arm64" else self.ssm_x86_64

    def no_base_reason(self, architecture: str, accelerator: str = "none") -> str | None:
        """Why the family has no ECS-optimized AMI for this architecture and accelerator, or None."""
        if self.ssm_parameter(architecture, accelerator):
            return None
        if accelerator == "nvidia" and self.ssm_nvidia_x86_64 is None:
            return f"AWS publishes no ECS GPU-optimized AMI for the {self.label}; use image.base ecs-al2023 for a GPU task"
        if accelerator == "nvidia":
            return ("AWS publishes no arm64 ECS GPU-optimized AMI (its GPU AMIs are x86_64 only: aws/amazon-ecs-ami has no "
                    "arm64 GPU recipe, issues #220 and #241); use image.architecture x86_64 and x86 GPU types such as g5")
        return f"the {self.label} has no {architecture} image; use x86_64 or another image.base"

    def image_type(self, accelerator: str = "none") -> str:
        """AWS Batch's ec2Configuration imageType for the family's instances."""
        if accelerator == "nvidia" and self.ecs_nvidia_image_type:
            return self.ecs_nvidia_image_type
        return self.ecs_image_type

    @property
    def sized_device(self) -> str:
        """The device whose size must hold the task's data."""
        return self.docker_device or self.root_device

    @property
    def base_sized_gib(self) -> int:
        """The sized device's size in the base AMI: a launch template cannot make it smaller."""
        return self.base_docker_gib or self.base_root_gib


_ECS = "/aws/service/ecs/optimized-ami"
# `image.accelerator`: none, or NVIDIA GPUs through the family's ECS GPU-optimized AMI.
ACCELERATORS = ("none", "nvidia")

FAMILIES: dict[str, Family] = {
    "al2023": Family(
        key="al2023",
        label="ECS-optimized Amazon Linux 2023",
        storage_driver="overlay2",
        root_device="/dev/xvda",
        docker_device=None,
        ssh_user="ec2-user",
        ssm_x86_64=f"{_ECS}/amazon-linux-2023/recommended/image_id",
        ssm_arm64=f"{_ECS}/amazon-linux-2023/arm64/recommended/image_id",
        ecs_image_type="ECS_AL2023",
        base_root_gib=30,
        python_interpreter="/usr/bin/python3",
        python_label="Python 3.9",
        ansible_core_below=None,
        data_device="/dev/xvdb",
        # aws/amazon-ecs-ami generate-release-notes.sh (the parameters ECS releases) and
        # Batch's Ec2Configuration.imageType (ECS_AL2023_NVIDIA, API reference).
        ssm_nvidia_x86_64=f"{_ECS}/amazon-linux-2023/gpu/recommended/image_id",
        ecs_nvidia_image_type="ECS_AL2023_NVIDIA",
    ),
    "al2": Family(
        key="al2",
        label="ECS-optimized Amazon Linux 2",
        storage_driver="overlay2",
        root_device="/dev/xvda",
        docker_device=None,
        ssh_user="ec2-user",
        ssm_x86_64=f"{_ECS}/amazon-linux-2/recommended/image_id",
        ssm_arm64=f"{_ECS}/amazon-linux-2/arm64/recommended/image_id",
        ecs_image_type="ECS_AL2",
        base_root_gib=30,
        # ansible-core 2.17 still manages Python 3.7; 2.18 dropped it.
        python_interpreter="/usr/bin/python3",
        python_label="Python 3.7",
        ansible_core_below=(2, 18),
        data_device="/dev/xvdb",
        # "Amazon Linux 2 (GPU) AMI metadata: /aws/service/ecs/optimized-ami/amazon-linux-2/gpu/<version>"
        # (ECS developer guide, "Retrieving Amazon ECS-optimized Linux AMI metadata").
        ssm_nvidia_x86_64=f"{_ECS}/amazon-linux-2/gpu/recommended/image_id",
        ecs_nvidia_image_type="ECS_AL2_NVIDIA",
    ),
    "al1": Family(
        key="al1",
        label="ECS-optimized Amazon Linux (legacy, Docker on devicemapper)",
        storage_driver="devicemapper",
        root_device="/dev/xvda",
        docker_device="/dev/xvdcz",
        ssh_user="ec2-user",
        ssm_x86_64=f"{_ECS}/amazon-linux/recommended/image_id",
        ssm_arm64=None,
        ecs_image_type="ECS_AL1",
        base_root_gib=8,
        # The legacy AMI has no python3: its system Python is 2.7, which ansible-core
        # 2.17 dropped.
        python_interpreter="/usr/bin/python2.7",
        python_label="Python 2.7",
        ansible_core_below=(2, 17),
        base_docker_gib=22,
        # The legacy AMI ships no amazon-ssm-agent: Session Manager cannot reach its builder.
        ssm_agent=False,
        # No GPU variant: the ECS guide lists GPU metadata for Amazon Linux 2 and 2023 only,
        # and Batch has no ECS_AL1 NVIDIA imageType.
    ),
}

# The spec's `image.base` names a family as `ecs-<family>`.
BASE_TO_FAMILY = {f"ecs-{key}": key for key in FAMILIES}

# The builder runs Docker, the ECS agent and a conda-forge solve for the pinned awscli;
# conda is documented to be OOM-killed on 1 GiB (a t3.micro), so the default builders
# have 4 GiB. factory.yaml's `builder.instance_types` picks others (at least 4 GiB).
BUILDER_INSTANCE_TYPE = {"x86_64": "t3.medium", "arm64": "t4g.medium"}
BUILDER_MIN_MEMORY_MIB = 4096
