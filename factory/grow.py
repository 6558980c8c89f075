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

    Scoped wherever EC2 allows it (AWS Service Authorization Reference, "Actions,
    resources, and condition keys for Amazon EC2"; EC2 User Guide, "Grant permission to
    tag Amazon EC2 resources during creation"; IAM User Guide, "Policy variables"):

    - `ec2:CreateVolume` only with the request tag `factory:grow=true`
      (`aws:RequestTag/${TagKey}`), and only encrypted (`ec2:Encrypted`);
    - `ec2:CreateTags` on volumes only inside the CreateVolume call (`ec2:CreateAction`),
      so existing volumes cannot be retagged into scope;
    - `ec2:AttachVolume` only of volumes tagged `factory:grow=true`;
    - on an instance (`ec2:AttachVolume`, `ec2:ModifyInstanceAttribute` for
      delete-on-termination, `ec2:CreateTags` for the `factory:grow-fired` key only,
      `aws:TagKeys`) only on the instance the call comes from: the role's credentials
      carry `ec2:SourceInstanceARN`, which must name the instance acted on
      (`.../instance/${ec2:InstanceID}`), and that instance must carry `factory:grow=true`
      from its launch template (`launch_template_tags`). So one grow instance cannot
      change another's attributes or attach volumes to it;
    - no `ec2:DeleteVolume`: the agent never deletes (a volume it made and could not
      attach is left for `factory prune`, whose caller's policy has it);
    - the Describe calls the agent waits and adopts with, which support no resource-level
      permissions (Resource `*`).

    What stays wide, and why: every process on a grow instance that reaches IMDS gets
    the role, job containers included (the launch template's hop limit of 2 lets
    containers on Docker's bridge reach it), so a job can do on its own instance what the
    agent does: create tagged encrypted volumes (CreateVolume names no instance, so it
    cannot be tied to the caller) and attach them to its own instance. The local cloud
    does not evaluate IAM: these conditions are checked against AWS's documented keys,
    not exercised (tests/test_grow_spec.py, tests/test_grow_agent.py prove the actions).
    """
    where = region or "*"
    volumes = f"arn:{partition}:ec2:{where}:*:volume/*"
    instances = f"arn:{partition}:ec2:{where}:*:instance/*"
    tagged = {f"aws:ResourceTag/{GROW_TAG}": "true"}
    # the instance acted on is the one the request comes from (policy variable ${ec2:InstanceID})
    calling_instance = {"StringLike": {"ec2:SourceInstanceARN": f"arn:{partition}:ec2:{where}:*:instance/${{ec2:InstanceID}}"}}
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
                "Sid": "FactoryGrowAttachOnlyGrowVolumes",
                "Effect": "Allow",
                "Action": "ec2:AttachVolume",
                "Resource": volumes,
                "Condition": {"StringEquals": tagged},
            },
            {
                "Sid": "FactoryGrowAttachAndKeepOnlyToTheCallingInstance",
                "Effect": "Allow",
                "Action": ["ec2:AttachVolume", "ec2:ModifyInstanceAttribute"],
                "Resource": instances,
                "Condition": {"StringEquals": tagged, **calling_instance},
            },
            {
                "Sid": "FactoryGrowMarkTheCallingInstance",
                "Effect": "Allow",
                "Action": "ec2:CreateTags",
                "Resource": instances,
                "Condition": {
                    "StringEquals": tagged,
                    "ForAllValues:StringEquals": {"aws:TagKeys": [FIRED_TAG]},
                    **calling_instance,
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
