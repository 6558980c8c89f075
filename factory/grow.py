"""`storage.grow` as AWS data: the launch template's data volume and the instance's IAM policy.

With `storage.grow` a task's launch template gives Docker its own data volume (the root
volume stays the AMI's), and the grow agent on the image adds encrypted EBS volumes to
it before it fills (ansible/roles/grow_agent). This module holds what the register step
and `factory iam-policy --for instance` need, as plain data; nothing here calls AWS.

    data_volume_mapping(spec, volume_gib)   -> the launch template's BlockDeviceMappings item
    launch_template_tags(spec)              -> TagSpecifications for the instance and its volumes
    instance_policy(region=None)            -> the instance role's IAM policy document
"""

from __future__ import annotations

from typing import Any

# Tags. `factory:grow=true` marks what the net may touch: the instances launched from a
# growing launch template, and every volume the agent creates (the IAM policy is scoped to
# it). `factory:task` and `factory:instance` say whose a volume is, so `factory prune` can
# find the ones whose instance is gone. `factory:grow-fired` is set on the instance the
# first time the agent adds a volume: the sizing was short for that task.
GROW_TAG = "factory:grow"
TASK_TAG = "factory:task"
INSTANCE_TAG = "factory:instance"
FIRED_TAG = "factory:grow-fired"


def data_volume_mapping(spec: Any, volume_gib: int) -> dict[str, Any]:
    """The launch template `BlockDeviceMappings` item for a growing task's data volume.

    `volume_gib` is the tier's volume (`Tier.volume_gib`, the largest of its tasks'
    `SizingPlan.volume_gib`). Encrypted with the account's default EBS key, deleted with
    the instance. The root volume is left as the AMI has it: add no mapping for it.
    The keys are those of botocore's ec2 `LaunchTemplateEbsBlockDeviceRequest`."""
    grow = spec.storage.grow
    if grow is None:
        raise ValueError(f"{spec.name}: storage.grow is not set; the launch template sizes {spec.image.family_info.sized_device}")
    device = spec.image.family_info.data_device
    if device is None:  # validate refuses this (spec.py); kept as a guard for callers
        raise ValueError(f"{spec.name}: the {spec.image.family_info.label} cannot grow")
    return {
        "DeviceName": device,
        "Ebs": {
            "VolumeSize": int(volume_gib),
            "VolumeType": grow.volume_type,
            "Encrypted": True,
            "DeleteOnTermination": True,
        },
    }


def launch_template_tags(spec: Any) -> list[dict[str, Any]]:
    """`TagSpecifications` for a growing task's launch template: the instance carries
    `factory:grow=true` (the instance policy lets the agent attach to, and tag, only such
    instances) and the task's name, and so do the volumes launched with it."""
    tags = [{"Key": GROW_TAG, "Value": "true"}, {"Key": TASK_TAG, "Value": spec.name}]
    return [{"ResourceType": kind, "Tags": list(tags)} for kind in ("instance", "volume")]


def instance_policy(region: str | None = None, partition: str = "aws") -> dict[str, Any]:
    """The IAM policy the instance role needs for the grow agent, least privilege.

    Scoped by tag wherever EC2 allows it (AWS Service Authorization Reference, "Actions,
    resources, and condition keys for Amazon EC2"; EC2 User Guide, "Grant permission to
    tag Amazon EC2 resources during creation"):

    - `ec2:CreateVolume` only with the request tag `factory:grow=true`
      (`aws:RequestTag/${TagKey}`), and only encrypted (`ec2:Encrypted`);
    - `ec2:CreateTags` on volumes only inside the CreateVolume call (`ec2:CreateAction`),
      so existing volumes cannot be retagged into scope;
    - `ec2:AttachVolume`, `ec2:ModifyInstanceAttribute` (delete-on-termination) and
      `ec2:DeleteVolume` (a volume the agent made but could not attach) only on resources
      tagged `factory:grow=true` (`aws:ResourceTag/${TagKey}`); the instance carries it
      from its launch template (`launch_template_tags`);
    - `ec2:CreateTags` on the instance only for the `factory:grow-fired` key (`aws:TagKeys`);
    - the Describe calls the agent waits and adopts with, which support no resource-level
      permissions (Resource `*`).
    """
    where = region or "*"
    volumes = f"arn:{partition}:ec2:{where}:*:volume/*"
    instances = f"arn:{partition}:ec2:{where}:*:instance/*"
    tagged = {"StringEquals": {f"aws:ResourceTag/{GROW_TAG}": "true"}}
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "FactoryGrowCreateTaggedEncryptedVolumes",
                "Effect": "Allow",
                "Action": "ec2:CreateVolume",
                "Resource": volumes,
                "Condition": {
                    "StringEquals": {f"aws:RequestTag/{GROW_TAG}": "true"},
                    "Bool": {"ec2:Encrypted": "true"},
                },
            },
            {
                "Sid": "FactoryGrowTagVolumesOnlyAtCreation",
                "Effect": "Allow",
                "Action": "ec2:CreateTags",
                "Resource": volumes,
                "Condition": {"StringEquals": {"ec2:CreateAction": "CreateVolume"}},
            },
            {
                "Sid": "FactoryGrowAttachAndKeepOnlyGrowResources",
                "Effect": "Allow",
                "Action": ["ec2:AttachVolume", "ec2:ModifyInstanceAttribute"],
                "Resource": [volumes, instances],
                "Condition": tagged,
            },
            {
                "Sid": "FactoryGrowDeleteOwnUnattachedVolumes",
                "Effect": "Allow",
                "Action": "ec2:DeleteVolume",
                "Resource": volumes,
                "Condition": tagged,
            },
            {
                "Sid": "FactoryGrowMarkTheInstance",
                "Effect": "Allow",
                "Action": "ec2:CreateTags",
                "Resource": instances,
                "Condition": {
                    "StringEquals": {f"aws:ResourceTag/{GROW_TAG}": "true"},
                    "ForAllValues:StringEquals": {"aws:TagKeys": [FIRED_TAG]},
                },
            },
            {
                "Sid": "FactoryGrowDescribe",
                "Effect": "Allow",
                "Action": ["ec2:DescribeVolumes", "ec2:DescribeInstances", "ec2:DescribeInstanceTypes"],
                "Resource": "*",
            },
        ],
    }
