"""Least privilege: the IAM actions each factory command needs, as policy documents.

`factory iam-policy [--for bake|register|prune|all]` prints them. Every action here is
one that factory (or Packer's amazon-ebs builder, for `bake`) really calls, or one that
authorizes something AWS does on the caller's behalf (`IMPLIED`, with the reason). The
test suite records every AWS call at the local cloud's end of the wire, per command
(tests/test_zz_iam_policy.py): a call missing from the policy fails, and so does a
policy action the suite never saw called.

Scoping, where IAM can see it: Batch resources by name prefix (`factory-*`), launch
templates by the `factory:managed` tag (their ARNs carry ids, not names), task parameters
by path, builders (instances) by the `factory:image-hash` tag Packer gives them at launch,
grow volumes by `factory:grow`. What is wide is said in `WIDE`, action by action, with
why: Describe/Get/List calls take `*` (most EC2 Describe calls support no resource-level
permission), and so do the calls on what Packer makes untagged (its temporary security
group, key pair and unencrypted AMI with its snapshots) and on the AMI before Packer tags
it. In particular no statement scopes DeregisterImage or DeleteSnapshot by the
`factory:task` tag: Packer's temporary AMI (bake) and a killed bake's (prune) carry no
tag, so both policies grant them on `*`, and a tag-scoped statement beside that would
allow nothing more (tests/test_iam_policies.py refuses such dead scoping).

`policy(purpose, builder)` adds what factory.yaml's `builder:` section needs when given:
the named instance profile only, Session Manager's calls (`ssh_interface:
session_manager`) and a customer-managed KMS key's (`kms_key`, factory.kms_policy).
`policy(purpose, builder, copy_roles)` narrows `sts:AssumeRole` (distribute) to exactly the
roles `distribute.copy_to` names (factory.yaml's and the specs' own: `copy_roles`); without
them it is granted on any role (`ANY_ROLE`), said in `WIDE` with why. The
local cloud cannot run a Session Manager session nor evaluate IAM: those additions are
documented (Packer's source, AWS's guides), not proven by the suite.
"""

from __future__ import annotations

from typing import Any

from factory import kms_policy

PURPOSES = ("bake", "distribute", "register", "prune", "status", "rollback")

# What each CLI command needs (bake ends with a register unless --no-register).
COMMAND_PURPOSES = {
    "bake": ("bake", "distribute", "register"),
    "distribute": ("distribute", "register"),  # --register: the copies registered in their regions
    "register": ("register",),
    "plan": ("register",),
    "nextflow-config": ("register",),
    "prune": ("prune",),
    "render": ("bake",),
    "show": ("register",),
    "status": ("status",),
    "lock": ("status",),  # reads the ECS-optimized parameters, as status does
    "rollback": ("register", "rollback"),
    # `--refresh` reads DescribeInstanceTypes, which the bake's policy already allows.
    "instance-storage": ("bake",),
}

# Allowed but never an API call of factory's own, with the reason it is needed.
IMPLIED = {
    "iam:PassRole": "register passes the instance role (and a service role, when factory.yaml names one) to Batch; bake passes builder.instance_profile's role to EC2 when named",
    "iam:CreateServiceLinkedRole": "Batch creates its service-linked role on an account's first CreateComputeEnvironment, as the caller",
    "ec2:DeleteSnapshot": "DeregisterImage with DeleteAssociatedSnapshots deletes the AMI's snapshots as the caller",
    "ec2:CreateKeyPair": "on AWS Packer makes a temporary key pair (the local cloud's build host brings its own)",
    "ec2:DeleteKeyPair": "on AWS Packer deletes its temporary key pair",
    "ec2:DescribeRegions": "on AWS Packer validates the region (skipped against the local cloud's endpoint)",
    "kms:CreateGrant": "distribute: CopyImage with a customer-managed key makes EBS create a grant on it as the caller (kms:GrantIsForAWSResource)",
    "kms:Decrypt": "distribute: EBS decrypts the source's snapshots as the caller of CopyImage",
    "kms:GenerateDataKeyWithoutPlaintext": "distribute: EBS makes the copy's data keys with the region's key as the caller of CopyImage",
    "kms:ReEncryptFrom": "distribute: EBS re-encrypts the copy under the region's key as the caller of CopyImage",
    "kms:ReEncryptTo": "distribute: EBS re-encrypts the copy under the region's key as the caller of CopyImage",
    "ssm:DescribeParameters": "prune: DescribeImageReferences finds the parameters that name an AMI with the caller's ssm:DescribeParameters (register and status call it themselves)",
}

# Mutating actions a purpose grants on `*` with no condition, and why IAM cannot be told
# more (tests/test_iam_policies.py checks this list against the policies).
_PACKER_UNTAGGED = "Packer's temporary {} carries no tag and a random name: IAM cannot tell it from the account's others"
WIDE: dict[str, dict[str, str]] = {
    "bake": {
        "ec2:RunInstances": "the builder is launched from the base AMI into a subnet with Packer's temporary security group and key pair; RunInstances authorizes each of them as a resource, none of them factory's",
        "ec2:CreateTags": "Packer tags the builder at launch, and the AMI and its snapshots once made; factory tags the AMI with its manifest (none of them has a tag to match before)",
        "ec2:CreateSecurityGroup": _PACKER_UNTAGGED.format("security group"),
        "ec2:AuthorizeSecurityGroupIngress": _PACKER_UNTAGGED.format("security group"),
        "ec2:DeleteSecurityGroup": _PACKER_UNTAGGED.format("security group"),
        "ec2:CreateKeyPair": _PACKER_UNTAGGED.format("key pair"),
        "ec2:DeleteKeyPair": _PACKER_UNTAGGED.format("key pair"),
        "ec2:CreateImage": "the AMI does not exist yet, and Packer tags it only after the encrypted copy",
        "ec2:CopyImage": "the encrypted copy is made from Packer's untagged temporary AMI",
        "ec2:ModifyImageAttribute": "Packer sets the copy's attributes before it tags it",
        "ec2:DeregisterImage": "Packer's temporary unencrypted AMI, and an AMI factory could not tag (bake.images.discard_image), carry no tag",
        "ec2:DeleteSnapshot": "the snapshots of Packer's temporary AMI carry no tag",
    },
    "prune": {
        "ec2:DeregisterImage": "a killed bake's temporary AMI carries no tag (factory.packer_leftovers); so every AMI prune deregisters, factory's own included, is allowed on `*`",
        "ec2:DeleteSnapshot": "CreateImage's snapshots of a killed bake's builder carry no tag (found by their description)",
        "ec2:DeleteSecurityGroup": _PACKER_UNTAGGED.format("security group (of a killed bake)"),
    },
}
# copy_to's roles, assumed to copy (distribute) and to read and change the copy_to accounts
# (plan/register/rollback, status, prune): wide only while the roles are not known.
for _purpose in ("distribute", "register", "status", "prune"):
    WIDE.setdefault(_purpose, {})["sts:AssumeRole"] = (
        "without factory.yaml (`factory iam-policy --config FILE`) the roles `distribute.copy_to` names are not known, so any "
        "role (arn:aws:iam::*:role/*) may be assumed; each role's own trust policy still decides who may assume it. With "
        "--config the statement names exactly the copy_to roles")
ANY_ROLE = ["arn:aws:iam::*:role/*"]  # granted with no condition only where WIDE says so


def wide(purpose: str, copy_roles: Any = None) -> dict[str, str]:
    """WIDE[purpose], less what `copy_roles` narrows (sts:AssumeRole to the named roles)."""
    out = dict(WIDE.get(purpose, {}))
    if copy_roles is not None:
        out.pop("sts:AssumeRole", None)
    return out


_ANY = ["*"]
_BUILDERS = ["arn:aws:ec2:*:*:instance/*"]
_BUILDER_TAGGED = {"Null": {"aws:ResourceTag/factory:image-hash": "false"}}  # Packer's run_tags, from launch
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


def _session_manager_statements() -> list[dict[str, Any]]:
    """`ssh_interface: session_manager`: Packer waits for the builder's status checks, then
    opens a port-forwarding session to it and ends it (step_create_ssm_tunnel.go). Only to
    builders (their `factory:image-hash` tag, `ssm:resourceTag`), only with AWS's port
    forwarding document, only the caller's own sessions."""
    return [
        _statement("SessionManagerWaitForTheBuilder", ["ec2:DescribeInstanceStatus"], _ANY),
        _statement("SessionManagerToBuilders", ["ssm:StartSession"], _BUILDERS, {"Null": {"ssm:resourceTag/factory:image-hash": "false"}}),
        _statement("SessionManagerPortForwarding", ["ssm:StartSession"], ["arn:aws:ssm:*::document/AWS-StartPortForwardingSession"]),
        _statement("SessionManagerEndOwnSessions", ["ssm:TerminateSession"], ["arn:aws:ssm:*:*:session/${aws:userid}-*"]),
    ]


def _assume_copy_to_roles(copy_roles: Any) -> list[dict[str, Any]]:
    """copy_to: the role named for each account is assumed (factory.distribute.accounts) to
    copy there, and by plan, status, prune and rollback to read and change that account as
    this one (factory.distribute.other_accounts). The role needs the distribute policy in its
    own account (and register's, status's, prune's and rollback's for those commands:
    docs/register.md, "Distribution"). copy_roles None: not known, any role (WIDE says why)."""
    roles = ANY_ROLE if copy_roles is None else sorted(set(copy_roles))
    return [_statement("AssumeCopyToRoles", ["sts:AssumeRole"], roles)] if roles else []


def _statements(purpose: str, builder: Any = None, copy_roles: Any = None) -> list[dict[str, Any]]:
    if purpose == "bake":
        statements = [
            # The base AMIs' SSM parameters (what the lock lacks: GetParameters, ten at a time),
            # the locked base images (deprecated? deregistered?), images by content hash, the
            # builder type's memory.
            # ... and what a failed Packer call left (factory.packer_leftovers: builders by tag,
            # temporary AMIs by source instance, CreateImage's snapshots by description).
            _statement("ReadBaseAndImages", ["ssm:GetParameters", "ec2:DescribeImages", "ec2:DescribeInstanceTypes",
                                             "ec2:DescribeInstances", "ec2:DescribeSnapshots"], _ANY),
            # Packer's amazon-ebs builder, as factory configures it (SSH, a temporary security
            # group, an encrypted EBS-backed AMI); on what Packer makes untagged (WIDE says why).
            _statement(
                "PackerAmazonEbs",
                [
                    "ec2:AuthorizeSecurityGroupIngress", "ec2:CreateImage", "ec2:CreateKeyPair", "ec2:CreateSecurityGroup",
                    "ec2:CreateTags", "ec2:DeleteKeyPair", "ec2:DeleteSecurityGroup", "ec2:DescribeImages",
                    "ec2:DescribeInstances", "ec2:DescribeRegions", "ec2:DescribeSecurityGroups",
                    "ec2:DescribeSubnets", "ec2:DescribeVolumes", "ec2:RunInstances",
                    # encrypt_boot: the temporary AMI is copied encrypted, its attributes set, then it
                    # goes with its snapshots; an AMI factory could not tag goes the same way.
                    "ec2:CopyImage", "ec2:ModifyImageAttribute", "ec2:DeregisterImage", "ec2:DeleteSnapshot",
                ],
                _ANY,
            ),
            # The builder is stopped (for CreateImage) and terminated only as what it is: an
            # instance Packer launched with factory's content-hash tag (run_tags).
            _statement("StopAndTerminateBuilders", ["ec2:StopInstances", "ec2:TerminateInstances"], _BUILDERS, _BUILDER_TAGGED),
            _statement("PassBuilderProfile", ["iam:PassRole"], ["arn:aws:iam::*:role/*"], {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}}),
        ]
        # builder.instance_profile: Packer checks the profile exists (GetInstanceProfile)
        # before it launches (step_iam_instance_profile.go, unless skip_profile_validation).
        profile = "*" if builder is None else builder.instance_profile
        if profile:
            statements.append(_statement("ReadBuilderProfile", ["iam:GetInstanceProfile"], [f"arn:aws:iam::*:instance-profile/{profile}"]))
        if builder is not None and builder.ssh_interface == "session_manager":
            statements += _session_manager_statements()
        if builder is not None and builder.kms_key:
            statements += kms_policy.use_statements(builder.kms_key, "BuilderKmsKey")
        return statements
    if purpose == "distribute":
        images, snapshots = ["arn:aws:ec2:*::image/*"], ["arn:aws:ec2:*::snapshot/*"]
        copies = {"Null": {"aws:ResourceTag/factory:copy-of": "false"}}
        factory_made = {"Null": {"aws:ResourceTag/factory:image-hash": "false"}}
        via_ec2 = {"StringLike": {"kms:ViaService": "ec2.*.amazonaws.com"}}
        return [
            # The source, its snapshots and launch permissions; the copies found by their tags;
            # each region's key (there, customer-managed, enabled: factory.distribute.keys).
            _statement("Read", ["ec2:DescribeImages", "ec2:DescribeImageAttribute", "ec2:DescribeSnapshots",
                                "ec2:DescribeSnapshotAttribute"], _ANY),
            _statement("ReadRegionKeys", ["kms:DescribeKey"], ["arn:aws:kms:*:*:key/*"]),
            # CopyImage authorizes the source image (factory's: its content-hash tag; IAM
            # scopes CopyImage on the source since 2024-10-28) and the new image and snapshots
            # (tagged at birth with factory:copy-of, TagSpecifications).
            _statement("CopyFactoryImages", ["ec2:CopyImage"], images, factory_made),
            _statement("CopyIntoNewImages", ["ec2:CopyImage"], images + snapshots,
                       {"Null": {"aws:RequestTag/factory:copy-of": "false"}}),
            _statement("TagCopiesAtBirth", ["ec2:CreateTags"], images + snapshots, {"StringEquals": {"ec2:CreateAction": "CopyImage"}}),
            _statement("TagCopiesSnapshots", ["ec2:CreateTags"], snapshots, copies),
            # A failed copy is counted on its source (copies.FAILURES_TAG): the next CopyImage's token is new.
            _statement("CountFailedCopies", ["ec2:CreateTags"], images, factory_made),
            # Launch permissions per region (never copied), createVolumePermission for the
            # accounts that copy: on factory's images and snapshots only.
            _statement("ShareFactoryImages", ["ec2:ModifyImageAttribute"], images, factory_made),
            _statement("ShareFactorySnapshots", ["ec2:ModifySnapshotAttribute"], snapshots, factory_made),
            # A copy that failed goes with its snapshots (DeleteAssociatedSnapshots).
            _statement("DiscardFailedCopies", ["ec2:DeregisterImage", "ec2:DeleteSnapshot"], images + snapshots, copies),
            *_assume_copy_to_roles(copy_roles),
            # EBS uses each region's key as the caller of CopyImage (IMPLIED says how).
            _statement("UseRegionKeysThroughEc2", ["kms:Decrypt", "kms:GenerateDataKeyWithoutPlaintext", "kms:ReEncryptFrom",
                                                   "kms:ReEncryptTo"], ["arn:aws:kms:*:*:key/*"], via_ec2),
            _statement("GrantRegionKeysToEbs", ["kms:CreateGrant"], ["arn:aws:kms:*:*:key/*"],
                       {**via_ec2, "Bool": {"kms:GrantIsForAWSResource": "true"}}),
        ]
    if purpose == "register":
        return [
            _statement(
                "Read",
                [
                    "ec2:DescribeImages", "ec2:DescribeLaunchTemplates", "ec2:DescribeLaunchTemplateVersions", "ec2:DescribeVpcs",
                    "ec2:DescribeSubnets", "ec2:DescribeSecurityGroups", "batch:DescribeComputeEnvironments", "batch:DescribeJobQueues",
                    "iam:GetInstanceProfile", "iam:GetRole",
                    # the jobs that may still run on a replaced environment (factory.register.live_jobs);
                    # ListJobs takes no resource (Batch's service authorization reference)
                    "batch:ListJobs",
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
            *_assume_copy_to_roles(copy_roles),  # plan, rollback, a bake's register in copy_to accounts
        ]
    if purpose == "status":
        return [
            _statement("Read", ["ec2:DescribeImages", "ec2:DescribeLaunchTemplates", "ec2:DescribeLaunchTemplateVersions", "batch:DescribeComputeEnvironments",
                                "batch:DescribeJobQueues", "ec2:DescribeInstances"], _ANY),  # instances: where the grow agent fired
            _statement("ReadParameters", ["ssm:GetParameters"], _TASK_PARAMETERS + _ECS_BASE_PARAMETERS),
            _statement("FindRollbackHolds", ["ssm:DescribeParameters"], _ANY),
            *_assume_copy_to_roles(copy_roles),  # rows for the copy_to accounts
        ]
    if purpose == "rollback":
        return [_statement("ReadAmiHistory", ["ssm:GetParameterHistory"], _TASK_PARAMETERS)]
    if purpose == "prune":
        return [
            # ListJobs: a retired tier's queue with jobs is drained, not deleted (factory.register.live_jobs)
            _statement("Read", ["ec2:DescribeLaunchTemplates", "ec2:DescribeLaunchTemplateVersions", "ec2:DescribeImages",
                                "batch:DescribeComputeEnvironments", "batch:DescribeJobQueues", "batch:ListJobs"], _ANY),
            # A tier no spec uses: its queue and environments disabled, then deleted; its template.
            _statement("RetireFactoryBatchResources", ["batch:UpdateJobQueue", "batch:DeleteJobQueue", "batch:UpdateComputeEnvironment",
                                                       "batch:DeleteComputeEnvironment"], _BATCH_OURS),
            _statement("RetireFactoryLaunchTemplates", ["ec2:DeleteLaunchTemplate"], _LAUNCH_TEMPLATES, _MANAGED),
            _statement("RetireTaskParameters", ["ssm:DeleteParameter"], _TASK_PARAMETERS),
            # The tiers in use are register's choice: the room it recorded (/factory/tiers/room).
            _statement("ReadTierRoom", ["ssm:GetParameters"], _TASK_PARAMETERS),
            _statement("DeleteFactoryLaunchTemplateVersions", ["ec2:DeleteLaunchTemplateVersions"], _LAUNCH_TEMPLATES, _MANAGED),
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
            _statement("TerminateStrayBuilders", ["ec2:TerminateInstances"], _BUILDERS, _BUILDER_TAGGED),
            # Old AMIs with their snapshots (DeregisterImage with DeleteAssociatedSnapshots), and
            # what a stray builder left. No `factory:task` scoping: a killed bake's temporary AMI
            # is untagged, so this must be `*`, and a tag-scoped statement beside it would be dead.
            _statement("DeregisterImagesAndRemoveWhatStrayBuildersLeft", ["ec2:DeregisterImage", "ec2:DeleteSnapshot", "ec2:DeleteSecurityGroup"], _ANY),
            *_assume_copy_to_roles(copy_roles),  # the copy_to accounts, pruned by the same rules
        ]
    raise ValueError(f"no policy for {purpose!r}; one of {', '.join(PURPOSES)}")


def policy(purpose: str, builder: Any = None, copy_roles: Any = None) -> dict[str, Any]:
    """The policy document for one purpose (bake, register, prune, status, rollback).
    `builder` (factory.config.BuilderConfig): fit the bake policy to factory.yaml's
    `builder:` (its instance profile, Session Manager, KMS key); None: every builder
    the suite proves, without Session Manager or a KMS key. `copy_roles`: the role ARNs
    `distribute.copy_to` names, the only ones distribute may assume (none: no
    sts:AssumeRole at all); None: not known, any role."""
    return {"Version": "2012-10-17", "Statement": _statements(purpose, builder, copy_roles)}


def copy_roles_of(config: Any, specs: Any = ()) -> list[str]:
    """Every role `distribute.copy_to` names: factory.yaml's (config.distribute) and each
    spec's own `distribute:` (which replaces the file's copy_to when it names one)."""
    dists = [config.distribute] + [getattr(s, "distribute", None) for s in specs]
    return sorted({c.role for d in dists if d is not None for c in d.copy_to})


def actions(purpose: str, builder: Any = None, copy_roles: Any = None) -> set[str]:
    return {a for s in _statements(purpose, builder, copy_roles) for a in s["Action"]}


def needed_by(command: str) -> set[str]:
    """Every action a CLI command may call."""
    return {a for p in COMMAND_PURPOSES.get(command, ()) for a in actions(p)}


# The builder's instance role: what ECR authorizes a `docker pull` with at the registry
# endpoint, not API calls (tests/test_bake_check_ecr.py sees them asked of the local
# cloud's registry double; the IAM proof sees only API calls).
AT_THE_REGISTRY = {
    "ecr:BatchGetImage": "Docker reads the image's manifests from the registry",
    "ecr:GetDownloadUrlForLayer": "Docker downloads the image's config and layers from the registry",
}


def builder_instance_policy() -> dict[str, Any]:
    """What the builder's own instance profile (factory.yaml `builder.instance_profile`)
    needs for task images in ECR: the bake check (ansible/roles/bake_check,
    task_images.yml) asks ECR for a registry password with it (`aws ecr
    get-login-password`: GetAuthorizationToken, which takes no resource), and Docker pulls
    with that password, which ECR authorizes as BatchGetImage (the manifests) and
    GetDownloadUrlForLayer (the layers) on the repository (Amazon ECR User Guide,
    "Private registry authentication" and "Amazon ECR managed policies",
    AmazonEC2ContainerRegistryReadOnly). Not a caller's policy: attach it to the
    builder's role (docs/register.md). tests/test_bake_check_ecr.py pulls through the
    local cloud's ECR registry double and checks that what it called and pulled is exactly
    this."""
    return {"Version": "2012-10-17", "Statement": [
        _statement("GetEcrPassword", ["ecr:GetAuthorizationToken"], _ANY),
        _statement("PullTaskImages", ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"], ["arn:aws:ecr:*:*:repository/*"]),
    ]}
