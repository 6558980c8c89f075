"""GPU tasks (`image.accelerator: nvidia`): which EC2 instance families carry NVIDIA GPUs.

A table, not a rule: an instance family is a GPU family because AWS says so. Sources:
the EC2 User Guide, "Accelerated computing instances" (the families and their GPUs), and
the AWS Batch User Guide, "Use a GPU workload AMI" (Batch takes the ECS GPU-optimized AMI
for p6, p3, p4, p5, g3, g3s, g4, g5 and g6 families). Only x86_64 NVIDIA families can run
a factory GPU image: AWS publishes no arm64 ECS GPU-optimized AMI (aws/amazon-ecs-ami
issues #220, #241), so the Graviton GPU families below are known only to be refused by name.
"""

from __future__ import annotations

# x86_64 families with NVIDIA GPUs, and the GPU each carries (EC2 "Accelerated computing").
NVIDIA_X86_64_FAMILIES: dict[str, str] = {
    "g3": "NVIDIA Tesla M60",
    "g3s": "NVIDIA Tesla M60",
    "g4dn": "NVIDIA T4",
    "g5": "NVIDIA A10G",
    "g6": "NVIDIA L4",
    "gr6": "NVIDIA L4",
    "g6e": "NVIDIA L40S",
    "g6f": "NVIDIA L4 (fractional)",
    "p3": "NVIDIA V100",
    "p3dn": "NVIDIA V100",
    "p4d": "NVIDIA A100",
    "p4de": "NVIDIA A100 80GB",
    "p5": "NVIDIA H100",
    "p5e": "NVIDIA H200",
    "p5en": "NVIDIA H200",
    "p6-b200": "NVIDIA B200",
}

# Graviton (arm64) families with NVIDIA GPUs: no ECS GPU-optimized AMI exists for them.
NVIDIA_ARM64_FAMILIES: dict[str, str] = {
    "g5g": "NVIDIA T4G",
    "p6e-gb200": "NVIDIA GB200",
}

# Accelerated families whose accelerator is not an NVIDIA GPU (the NVIDIA stack cannot drive them).
OTHER_ACCELERATOR_FAMILIES: dict[str, str] = {
    "g4ad": "AMD Radeon Pro V520",
    "inf1": "AWS Inferentia",
    "inf2": "AWS Inferentia2",
    "trn1": "AWS Trainium",
    "trn1n": "AWS Trainium",
    "trn2": "AWS Trainium2",
    "dl1": "Habana Gaudi",
    "dl2q": "Qualcomm AI 100",
    "f1": "Xilinx FPGA",
    "f2": "AMD FPGA",
    "vt1": "Xilinx U30 media accelerator",
}

# GPU families Batch's ECS_AL2023_NVIDIA image type does not support ("ECS_AL2023_NVIDIA
# doesn't support p3 and g3 instance types": Batch API reference, Ec2Configuration.imageType);
# ECS_AL2_NVIDIA does.
NOT_ON_AL2023_NVIDIA = ("g3", "g3s", "p3", "p3dn")

# Batch's own instance-type keywords pick CPU families only (C, M and R: Batch API
# reference, ComputeResource.instanceTypes).
BATCH_CPU_KEYWORDS = ("optimal", "default_x86_64", "default_arm64")

# What a GPU spec's job asks for when it says nothing (nextflow.gpus).
DEFAULT_GPUS = 1


def instance_family(instance_type: str) -> str:
    """`g5` of `g5.xlarge`, `p6-b200` of `p6-b200.48xlarge`; a bare family stays as it is."""
    return instance_type.split(".")[0]


def nvidia_gpu(instance_type: str) -> str | None:
    """The NVIDIA GPU an instance type (or family) carries, or None for any other type."""
    family = instance_family(instance_type)
    return NVIDIA_X86_64_FAMILIES.get(family) or NVIDIA_ARM64_FAMILIES.get(family)


def accelerator_of(instance_type: str) -> str | None:
    """Any accelerator the type carries (NVIDIA or other), or None for a CPU-only type."""
    return nvidia_gpu(instance_type) or OTHER_ACCELERATOR_FAMILIES.get(instance_family(instance_type))


def example_types() -> str:
    return "g4dn.xlarge, g5.xlarge, g6.xlarge, g6e.xlarge, p4d.24xlarge or a family such as g5"
