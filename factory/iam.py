"""Least privilege: the IAM actions each factory command needs, as policy documents.

`factory iam-policy [--for bake|register|prune|all]` prints them. Every action here is
one that factory (or Packer's amazon-ebs builder, for `bake`) really calls, or one that
authorizes something AWS does on the caller's behalf (`IMPLIED`, with the reason). The
test suite records every AWS call at the local cloud's end of the wire, per command
(tests/test_zz_iam_policy.py): a call missing from the policy fails, and so does a
policy action the suite never saw called.

Scoping, where IAM allows it: Batch resources by name prefix (`factory-*`), launch
templates by the `factory:managed` tag (their ARNs carry ids, not names), AMIs and
snapshots being deleted by the `factory:task` tag. Describe/Get/List actions and Packer's
builder actions take `*` (most EC2 Describe calls support no resource-level permission;
Packer's documented minimal policy uses `*`).
"""

from __future__ import annotations

from typing import Any

PURPOSES = ("bake", "register", "prune", "status", "rollback")

# What each CLI command needs (bake ends with a register unless --no-register).
COMMAND_PURPOSES = {
    "bake": ("bake", "register"),
    "register": ("register",),
    "plan": ("register",),
    "nextflow-config": ("register",),
    "prune": ("prune",),
    "render": ("bake",),
    "show": ("register",),
    "status": ("status",),
    "rollback": ("register", "rollback"),
}

# Allowed but never an API call of factory's own, with the reason it is needed.
IMPLIED = {
    "iam:PassRole": "register passes the instance role (and a service role, when factory.yaml names one) to Batch; bake passes builder.instance_profile's role to EC2 when named",
    "iam:CreateServiceLinkedRole": "Batch creates its service-linked role on an account's first CreateComputeEnvironment, as the caller",
    "ec2:DeleteSnapshot": "DeregisterImage with DeleteAssociatedSnapshots deletes the AMI's snapshots as the caller",
    "ec2:CreateKeyPair": "on AWS Packer makes a temporary key pair (the local cloud's build host brings its own)",
    "ec2:DeleteKeyPair": "on AWS Packer deletes its temporary key pair",
    "ec2:DescribeRegions": "on AWS Packer validates the region (skipped against the local cloud's endpoint)",
    "ec2:DescribeSubnets": "on AWS Packer reads builder.subnet's VPC for its security group (the local cloud's builder names no subnet)",
    "ssm:DescribeParameters": "prune: DescribeImageReferences finds the parameters that name an AMI with the caller's ssm:DescribeParameters (register and status call it themselves)",
}

_ANY = ["*"]
_BATCH_OURS = ["arn:aws:batch:*:*:compute-environment/factory-*", "arn:aws:batch:*:*:job-queue/factory-*"]
_LAUNCH_TEMPLATES = ["arn:aws:ec2:*:*:launch-template/*"]
_MANAGED = {"StringEquals": {"aws:ResourceTag/factory:managed": "true"}}
_TASK_PARAMETERS = ["arn:aws:ssm:*:*:parameter/factory/*"]  # /factory/<task>/ami-id
_ECS_BASE_PARAMETERS = ["arn:aws:ssm:*::parameter/aws/service/ecs/optimized-ami/*"]  # AWS's public ones


def _statement(sid: str, actions: list[str], resources: list[str], condition: dict[str, Any] | None = None) -> dict[str, Any]:
    statement: dict[str, Any] = {"Sid": sid, "Effect": "Allow", "Action": sorted(actions), "Resource": resources}
    if condition:
        statement["Condition"] = condition
    return statement


def _statements(purpose: str) -> list[dict[str, Any]]:
    if purpose == "bake":
        return [
            # The base AMI's SSM parameter, images by content hash, the builder type's memory.
            # (bake --all reads the base parameters of every spec at once: GetParameters)
            # ... and what a failed Packer call left (factory.packer_leftovers: builders by tag,
            # temporary AMIs by source instance, CreateImage's snapshots by description).
            _statement("ReadBaseAndImages", ["ssm:GetParameter", "ssm:GetParameters", "ec2:DescribeImages", "ec2:DescribeInstanceTypes",
                                             "ec2:DescribeInstances", "ec2:DescribeSnapshots"], _ANY),
            # Packer's amazon-ebs builder, as factory configures it (SSH, a temporary security
            # group, an encrypted EBS-backed AMI); Packer documents these with Resource *.
            _statement(
                "PackerAmazonEbs",
                [
                    "ec2:AuthorizeSecurityGroupIngress", "ec2:CreateImage", "ec2:CreateKeyPair", "ec2:CreateSecurityGroup",
                    "ec2:CreateTags", "ec2:DeleteKeyPair", "ec2:DeleteSecurityGroup", "ec2:DescribeImages",
                    "ec2:DescribeInstances", "ec2:DescribeRegions", "ec2:DescribeSecurityGroups",
                    "ec2:DescribeSubnets", "ec2:DescribeVolumes", "ec2:RunInstances", "ec2:StopInstances", "ec2:TerminateInstances",
                    # encrypt_boot: the temporary AMI is copied encrypted, its attributes set, then it goes
                    "ec2:CopyImage", "ec2:ModifyImageAttribute", "ec2:DeregisterImage", "ec2:DeleteSnapshot",
                ],
                _ANY,
            ),
            _statement("PassBuilderProfile", ["iam:PassRole"], ["arn:aws:iam::*:role/*"], {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}}),
            # An AMI that could not be tagged is removed with its snapshots (bake.discard_image).
            _statement("DiscardUntaggedImage", ["ec2:DeregisterImage", "ec2:DeleteSnapshot"], _ANY,
                       {"Null": {"aws:ResourceTag/factory:task": "false"}}),
        ]
    if purpose == "register":
        return [
            _statement(
                "Read",
                [
                    "ec2:DescribeImages", "ec2:DescribeLaunchTemplates", "ec2:DescribeLaunchTemplateVersions", "ec2:DescribeVpcs",
                    "ec2:DescribeSubnets", "ec2:DescribeSecurityGroups", "batch:DescribeComputeEnvironments", "batch:DescribeJobQueues",
                    "iam:GetInstanceProfile", "iam:GetRole",
                ],
                _ANY,
            ),
            _statement("CreateLaunchTemplates", ["ec2:CreateLaunchTemplate"], _LAUNCH_TEMPLATES,
                       {"StringEquals": {"aws:RequestTag/factory:managed": "true"}}),
            _statement("TagNewLaunchTemplates", ["ec2:CreateTags"], _LAUNCH_TEMPLATES,
                       {"StringEquals": {"ec2:CreateAction": "CreateLaunchTemplate"}}),
            _statement(
                "ChangeFactoryLaunchTemplates",
                ["ec2:CreateLaunchTemplateVersion", "ec2:ModifyLaunchTemplate", "ec2:CreateTags", "ec2:DeleteTags"],
                _LAUNCH_TEMPLATES,
                _MANAGED,
            ),
            _statement(
                "FactoryBatchResources",
                [
                    "batch:CreateComputeEnvironment", "batch:UpdateComputeEnvironment", "batch:DeleteComputeEnvironment",
                    "batch:CreateJobQueue", "batch:UpdateJobQueue", "batch:TagResource", "batch:UntagResource",
                ],
                _BATCH_OURS,
            ),
            _statement("PassRolesToBatch", ["iam:PassRole"], ["arn:aws:iam::*:role/*"],
                       {"StringEquals": {"iam:PassedToService": ["batch.amazonaws.com", "ec2.amazonaws.com"]}}),
            _statement("BatchServiceLinkedRole", ["iam:CreateServiceLinkedRole"], ["arn:aws:iam::*:role/aws-service-role/batch.amazonaws.com/*"],
                       {"StringEquals": {"iam:AWSServiceName": "batch.amazonaws.com"}}),
            _statement("TaskAmiParameters", ["ssm:GetParameters", "ssm:PutParameter"], _TASK_PARAMETERS),
            # Where a rollback holds a task (the parameters' descriptions); DescribeParameters
            # takes no resource (SSM's service authorization reference lists it with `*`).
            _statement("FindRollbackHolds", ["ssm:DescribeParameters"], _ANY),
        ]
    if purpose == "status":
        return [
            _statement("Read", ["ec2:DescribeImages", "ec2:DescribeLaunchTemplates", "ec2:DescribeLaunchTemplateVersions", "batch:DescribeComputeEnvironments",
                                "batch:DescribeJobQueues", "ec2:DescribeInstances"], _ANY),  # instances: where the grow agent fired
            _statement("ReadParameters", ["ssm:GetParameters"], _TASK_PARAMETERS + _ECS_BASE_PARAMETERS),
            _statement("FindRollbackHolds", ["ssm:DescribeParameters"], _ANY),
        ]
    if purpose == "rollback":
        return [_statement("ReadAmiHistory", ["ssm:GetParameterHistory"], _TASK_PARAMETERS)]
    if purpose == "prune":
        return [
            _statement("Read", ["ec2:DescribeLaunchTemplates", "ec2:DescribeLaunchTemplateVersions", "ec2:DescribeImages",
                                "batch:DescribeComputeEnvironments", "batch:DescribeJobQueues"], _ANY),
            # A tier no spec uses: its queue and environments disabled, then deleted; its template.
            _statement("RetireFactoryBatchResources", ["batch:UpdateJobQueue", "batch:DeleteJobQueue", "batch:UpdateComputeEnvironment",
                                                       "batch:DeleteComputeEnvironment"], _BATCH_OURS),
            _statement("RetireFactoryLaunchTemplates", ["ec2:DeleteLaunchTemplate"], _LAUNCH_TEMPLATES, _MANAGED),
            _statement("RetireTaskParameters", ["ssm:DeleteParameter"], _TASK_PARAMETERS),
            _statement("DeleteFactoryLaunchTemplateVersions", ["ec2:DeleteLaunchTemplateVersions"], _LAUNCH_TEMPLATES, _MANAGED),
            _statement("DeleteFactoryImages", ["ec2:DeregisterImage", "ec2:DeleteSnapshot"], _ANY,
                       {"Null": {"aws:ResourceTag/factory:task": "false"}}),
            # Before deregistering: does anything else use the AMI (instances, launch templates,
            # parameters)? DescribeImageReferences takes no resource; EC2 looks with the caller's
            # own Describe permissions (DescribeInstances, DescribeLaunchTemplates and -Versions
            # are in Read and FindStrayBuilders; ssm:DescribeParameters: IMPLIED).
            _statement("FindWhatUsesImages", ["ec2:DescribeImageReferences", "ssm:DescribeParameters"], _ANY),
            # storage.grow: volumes the agent made and never attached (factory.leaked_volumes).
            _statement("FindLeakedVolumes", ["ec2:DescribeVolumes", "ec2:DescribeInstances"], _ANY),
            _statement("DeleteLeakedVolumes", ["ec2:DeleteVolume"], ["arn:aws:ec2:*:*:volume/*"],
                       {"StringEquals": {"aws:ResourceTag/factory:grow": "true"}}),
            # Builders a killed bake left (factory.packer_leftovers.stray_builders): found by
            # their content-hash tag, terminated by it; then what they left: Packer's
            # temporary AMI (untagged, so IAM cannot tell it from another of the account's
            # AMIs: the right bake's policy gives Packer) and its security group (untagged too).
            _statement("FindStrayBuilders", ["ec2:DescribeInstances", "ec2:DescribeSnapshots", "ec2:DescribeSecurityGroups"], _ANY),
            _statement("TerminateStrayBuilders", ["ec2:TerminateInstances"], ["arn:aws:ec2:*:*:instance/*"],
                       {"Null": {"aws:ResourceTag/factory:image-hash": "false"}}),
            _statement("RemoveWhatStrayBuildersLeft", ["ec2:DeregisterImage", "ec2:DeleteSnapshot", "ec2:DeleteSecurityGroup"], _ANY),
        ]
    raise ValueError(f"no policy for {purpose!r}; one of {', '.join(PURPOSES)}")


def policy(purpose: str) -> dict[str, Any]:
    """The policy document for one purpose (bake, register, prune, status, rollback)."""
    return {"Version": "2012-10-17", "Statement": _statements(purpose)}


def actions(purpose: str) -> set[str]:
    return {a for s in _statements(purpose) for a in s["Action"]}


def needed_by(command: str) -> set[str]:
    """Every action a CLI command may call."""
    return {a for p in COMMAND_PURPOSES.get(command, ()) for a in actions(p)}
