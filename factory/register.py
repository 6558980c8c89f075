"""Register baked AMIs: one launch template, compute environment and job queue per tier.

Desired state per tier -> plan (create / update / replace / unchanged, with the reason,
per resource) -> apply. The plan is the apply run with `dry_run=True`: the same code
walks the same decisions, reads AWS, and only skips the mutating calls, so `factory
plan` cannot disagree with `factory register`.

Everything is found by name and tags in AWS, never from local state, so a run that
failed half way is finished by the next one:

- launch template `factory-<tier>`: a new version (made the default) only when the AMI,
  the volume, the metadata options or the user data differ from the default version.
  A version left behind by an interrupted run (latest matches, default does not) is
  made the default instead of adding another one.
- compute environment `factory-<tier>` (managed, EC2 or SPOT), pinned to the launch
  template's version *number*. Scaling changes (min/max vCPUs) are updated in place;
  other changes are infrastructure updates, done in place only when AWS Batch allows
  it (service-linked role and a BEST_FIT_PROGRESSIVE / SPOT_* allocation strategy),
  otherwise a new compute environment `factory-<tier>-<hash>` is created, the queue is
  moved to it, and the old one is disabled and deleted (blue/green).
- job queue `factory-<tier>` in front of it.

docs/register.md has the details. boto3 is imported only by factory.aws when a client
is first made.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

from botocore.exceptions import ClientError

from factory.aws import Clients, aws_errors, error_code, error_message
from factory.config import FactoryConfig
from factory.errors import FactoryError, UsageError
from factory.families import FAMILIES, Family

PREFIX = "factory-"
TAG_TIER = "factory:tier"
TAG_TASKS = "factory:tasks"
TAG_MANAGED = "factory:managed"
TAG_TASK = "factory:task"
TAG_SPEC_HASH = "factory:spec-hash"

# Allocation strategies that allow infrastructure updates in place (AWS Batch user guide,
# "Perform infrastructure updates"); BEST_FIT needs a new compute environment.
INFRA_UPDATE_STRATEGIES = ("BEST_FIT_PROGRESSIVE", "SPOT_CAPACITY_OPTIMIZED", "SPOT_PRICE_CAPACITY_OPTIMIZED")
# Compute resource settings: scaling ones are always updated in place; infrastructure
# ones in place only under the conditions above; the rest only by a new environment.
SCALING_KEYS = ("minvCpus", "maxvCpus")
INFRA_KEYS = (
    "type",
    "allocationStrategy",
    "instanceTypes",
    "bidPercentage",
    "subnets",
    "securityGroupIds",
    "instanceRole",
    "launchTemplate",
    "ec2Configuration",
    "ec2KeyPair",
    "tags",
)
REPLACE_KEYS = ("spotIamFleetRole",)

MIME_BOUNDARY = "==FACTORY-BOUNDARY=="


def resource_name(tier: str) -> str:
    """`factory-<tier>`: the name of the tier's launch template, compute environment and queue."""
    return PREFIX + tier


# ---------------------------------------------------------------------------------------
# Desired state


@dataclass(frozen=True)
class TierTarget:
    """What one tier needs, from its specs and sizes (no AWS yet)."""

    tier: str
    tasks: tuple[str, ...]
    region: str
    family: Family
    architecture: str
    volume_gib: int
    ami_task: str  # the largest task: its AMI is the tier's
    batch: Any  # factory.spec.BatchSpec
    spec_hash: str  # of the ami_task's spec, to notice an AMI baked from an older spec

    @property
    def name(self) -> str:
        return resource_name(self.tier)

    @property
    def tags(self) -> dict[str, str]:
        """The tags on the tier's launch template, compute environment and queue."""
        return {TAG_TIER: self.tier, TAG_TASKS: ",".join(self.tasks), TAG_MANAGED: "true"}


def targets_for(specs: Sequence[Any], tiers: Sequence[Any]) -> list[TierTarget]:
    """One TierTarget per tier; the tier's AMI, family and settings are its largest task's."""
    by_name = {s.name: s for s in specs}
    out: list[TierTarget] = []
    for tier in tiers:
        missing = [t for t in tier.tasks if t not in by_name]
        if missing:
            raise FactoryError(f"tier {tier.name} names task(s) {', '.join(missing)} with no spec; run `factory validate specs/`")
        members = [by_name[t] for t in tier.tasks]
        largest = by_name[tier.largest_task]
        for field_name, get in (
            ("region", lambda s: s.region),
            ("image.family", lambda s: s.image.family),
            ("image.architecture", lambda s: s.image.architecture),
            ("batch", lambda s: s.batch),
        ):
            values = {repr(get(s)) for s in members}
            if len(values) > 1:
                raise FactoryError(
                    f"tier {tier.name} mixes tasks with different {field_name} ({', '.join(tier.tasks)}); "
                    "tasks share a tier only when their tier group matches (a factory.tiers bug)"
                )
        out.append(
            TierTarget(
                tier=tier.name,
                tasks=tuple(sorted(tier.tasks)),
                region=largest.region,
                family=FAMILIES[largest.image.family],
                architecture=largest.image.architecture,
                volume_gib=int(tier.volume_gib),
                ami_task=largest.name,
                batch=largest.batch,
                spec_hash=largest.spec_hash,
            )
        )
    return out


def mime_user_data(commands: Sequence[str]) -> str:
    """User data in the MIME multi-part form AWS Batch requires for launch templates."""
    script = "#!/bin/bash\nset -euo pipefail\n" + "".join(c.rstrip("\n") + "\n" for c in commands)
    return (
        f'Content-Type: multipart/mixed; boundary="{MIME_BOUNDARY}"\n'
        "MIME-Version: 1.0\n"
        "\n"
        f"--{MIME_BOUNDARY}\n"
        'Content-Type: text/x-shellscript; charset="us-ascii"\n'
        "\n"
        f"{script}"
        "\n"
        f"--{MIME_BOUNDARY}--\n"
    )


def launch_template_data(target: TierTarget, ami: str, boot_commands: Sequence[str] = ()) -> dict[str, Any]:
    """The launch template content for a tier: AMI, sized gp3 device, IMDSv2, user data."""
    data: dict[str, Any] = {
        "ImageId": ami,
        "BlockDeviceMappings": [
            {
                # AL1 boots from /dev/xvda and keeps Docker's thin pool on /dev/xvdcz: the
                # root stays as the AMI has it and the Docker device is sized.
                "DeviceName": target.family.sized_device,
                "Ebs": {
                    "VolumeSize": target.volume_gib,
                    "VolumeType": "gp3",
                    "Encrypted": True,
                    "DeleteOnTermination": True,
                },
            }
        ],
        # IMDSv2 only; hop limit 2 so containers on the bridge network still reach it.
        "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled", "HttpPutResponseHopLimit": 2},
    }
    if boot_commands:
        data["UserData"] = base64.b64encode(mime_user_data(boot_commands).encode()).decode()
    return data


def _comparable_lt(data: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a launch template version factory decides; AWS adds others."""
    bdms = []
    for m in data.get("BlockDeviceMappings") or []:
        ebs = m.get("Ebs") or {}
        bdms.append(
            {
                "DeviceName": m.get("DeviceName"),
                "Ebs": {k: ebs.get(k) for k in ("VolumeSize", "VolumeType", "Encrypted", "DeleteOnTermination")},
            }
        )
    meta = data.get("MetadataOptions") or {}
    user_data = data.get("UserData")
    return {
        "ImageId": data.get("ImageId"),
        "BlockDeviceMappings": sorted(bdms, key=lambda m: m["DeviceName"] or ""),
        "MetadataOptions": {k: meta.get(k) for k in ("HttpTokens", "HttpEndpoint", "HttpPutResponseHopLimit")},
        "UserData": base64.b64decode(user_data).decode(errors="replace") if user_data else None,
    }


def _lt_differences(have: Mapping[str, Any], want: Mapping[str, Any]) -> list[str]:
    a, b = _comparable_lt(have), _comparable_lt(want)
    out = []
    if a["ImageId"] != b["ImageId"]:
        out.append(f"AMI {a['ImageId']} -> {b['ImageId']}")
    if a["BlockDeviceMappings"] != b["BlockDeviceMappings"]:
        old = ", ".join(f"{m['DeviceName']} {m['Ebs']['VolumeSize']} GiB" for m in a["BlockDeviceMappings"]) or "none"
        new = ", ".join(f"{m['DeviceName']} {m['Ebs']['VolumeSize']} GiB" for m in b["BlockDeviceMappings"])
        same_size = [m["Ebs"]["VolumeSize"] for m in a["BlockDeviceMappings"]] == [m["Ebs"]["VolumeSize"] for m in b["BlockDeviceMappings"]]
        out.append(f"volume {old} -> {new}" + (" (type/encryption)" if same_size else ""))
    if a["MetadataOptions"] != b["MetadataOptions"]:
        out.append("metadata options (IMDSv2)")
    if a["UserData"] != b["UserData"]:
        out.append("user data")
    return out


# ---------------------------------------------------------------------------------------
# Results


@dataclass
class Change:
    """One resource's decision: action is create | update | replace | delete | unchanged."""

    resource: str  # launch-template | compute-environment | job-queue | ami
    name: str
    action: str
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"resource": self.resource, "name": self.name, "action": self.action, "reason": self.reason}


@dataclass(frozen=True)
class Network:
    region: str
    source: str  # "config FILE" | "default VPC vpc-... (region)"
    subnets: tuple[str, ...]
    security_groups: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"region": self.region, "source": self.source, "subnets": list(self.subnets), "security_groups": list(self.security_groups)}


@dataclass
class TierResult:
    tier: str
    tasks: tuple[str, ...]
    region: str
    ami_id: str
    ami_source: str
    volume_gib: int
    launch_template: dict[str, Any]  # name, id, version
    compute_environment: str
    job_queue: str
    network: Network
    changes: list[Change] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return any(c.action != "unchanged" for c in self.changes)

    def task_json(self) -> dict[str, Any]:
        """The keys `bake --json` and `register --json` add for a task of this tier."""
        return {
            "tier": self.tier,
            "ami_id": self.ami_id,
            "launch_template": {"name": self.launch_template["name"], "version": self.launch_template["version"]},
            "compute_environment": self.compute_environment,
            "job_queue": self.job_queue,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            **self.task_json(),
            "tasks": list(self.tasks),
            "region": self.region,
            "ami_source": self.ami_source,
            "volume_gib": self.volume_gib,
            "launch_template": dict(self.launch_template),
            "network": self.network.to_json(),
            "changes": [c.to_json() for c in self.changes],
            "notes": list(self.notes),
            "status": "changed" if self.changed else "unchanged",
        }


@dataclass
class RegisterResult:
    tiers: list[TierResult]
    dry_run: bool
    config_source: str

    @property
    def changed(self) -> bool:
        return any(t.changed for t in self.tiers)

    def for_task(self, task: str) -> TierResult:
        for t in self.tiers:
            if task in t.tasks:
                return t
        raise KeyError(task)

    def to_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "config": self.config_source,
            "status": "changed" if self.changed else "unchanged",
            "tiers": [t.to_json() for t in self.tiers],
            "tasks": {task: t.task_json() for t in self.tiers for task in t.tasks},
        }


# ---------------------------------------------------------------------------------------
# Read-only lookups


def _tags(items: Iterable[Mapping[str, str]] | None) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in items or []}


def find_ami(clients: Clients, task: str, architecture: str | None = None) -> dict[str, Any] | None:
    """The newest available AMI of ours tagged factory:task=TASK (None when there is none)."""
    ec2 = clients.ec2()
    filters = [{"Name": f"tag:{TAG_TASK}", "Values": [task]}, {"Name": "state", "Values": ["available"]}]
    if architecture:
        filters.append({"Name": "architecture", "Values": [architecture]})
    with aws_errors(f"looking up the AMI of task {task}"):
        images = ec2.describe_images(Owners=["self"], Filters=filters)["Images"]
    if not images:
        return None
    return max(images, key=lambda i: (i.get("CreationDate", ""), i["ImageId"]))


def _resolve_ami(clients: Clients, target: TierTarget, overrides: Mapping[str, str]) -> tuple[str, str, list[str]]:
    notes: list[str] = []
    ignored = sorted(t for t in overrides if t in target.tasks and t != target.ami_task)
    if ignored:
        notes.append(
            f"AMI given for {', '.join(ignored)} not used: tier {target.tier} runs on the AMI of its largest task, {target.ami_task}"
        )
    ami = overrides.get(target.ami_task)
    if ami:
        with aws_errors(f"checking AMI {ami}"):
            try:
                images = clients.ec2().describe_images(ImageIds=[ami])["Images"]
            except ClientError as exc:  # an id that does not exist
                if error_code(exc).startswith("InvalidAMIID"):
                    images = []
                else:
                    raise
        if not images:
            raise FactoryError(f"AMI {ami} (given for task {target.ami_task}) does not exist in {target.region}; check --ami")
        image = images[0]
        if image.get("State") != "available":
            raise FactoryError(f"AMI {ami} is {image.get('State')}, not available; wait for it or pass another --ami")
        if image.get("Architecture") and image["Architecture"] != target.architecture:
            raise FactoryError(
                f"AMI {ami} is {image['Architecture']} but task {target.ami_task} is {target.architecture}; pass an AMI of the right architecture"
            )
        return ami, "given (--ami / bake)", notes
    image = find_ami(clients, target.ami_task, target.architecture)
    if image is None:
        raise FactoryError(
            f"no available AMI tagged {TAG_TASK}={target.ami_task} ({target.architecture}) in {target.region}: "
            f"run `factory bake {target.ami_task}` first, or pass --ami ami-..."
        )
    tags = _tags(image.get("Tags"))
    if tags.get(TAG_SPEC_HASH) and tags[TAG_SPEC_HASH] != target.spec_hash:
        notes.append(
            f"AMI {image['ImageId']} was baked from an older version of {target.ami_task}'s spec; "
            f"run `factory bake {target.ami_task}` to refresh it"
        )
    return image["ImageId"], f"newest AMI tagged {TAG_TASK}={target.ami_task}", notes


def resolve_network(clients: Clients, region: str, config: FactoryConfig) -> Network:
    """Subnets and security groups: from the config file, else the region's default VPC."""
    if config.batch.has_network:
        return Network(region, f"config {config.source}", config.batch.subnets, config.batch.security_groups)
    ec2 = clients.ec2()
    with aws_errors(f"looking up the default VPC in {region}"):
        vpcs = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
        if not vpcs:
            raise FactoryError(
                f"{region} has no default VPC, and {config.source} gives no batch.subnets: "
                "add `batch: {subnets: [subnet-...], security_groups: [sg-...]}` to factory.yaml "
                "(or pass --config FILE); see docs/register.md, 'Config file'"
            )
        vpc = vpcs[0]["VpcId"]
        subnets = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc]}])["Subnets"]
        groups = ec2.describe_security_groups(
            Filters=[{"Name": "vpc-id", "Values": [vpc]}, {"Name": "group-name", "Values": ["default"]}]
        )["SecurityGroups"]
    if not subnets or not groups:
        raise FactoryError(
            f"the default VPC {vpc} in {region} has no subnets or no `default` security group: "
            "name them in factory.yaml under batch.subnets / batch.security_groups"
        )
    return Network(
        region,
        f"default VPC {vpc} ({region})",
        tuple(sorted(s["SubnetId"] for s in subnets)),
        tuple(sorted(g["GroupId"] for g in groups)),
    )


def _resolve_role(clients: Clients, value: str | None, kind: str, setting: str) -> str | None:
    """A role or instance profile name -> its ARN (ARNs pass through)."""
    if value is None or value.startswith("arn:"):
        return value
    iam = clients.client("iam")
    with aws_errors(f"looking up the {kind} {value}"):
        try:
            if kind == "instance profile":
                return iam.get_instance_profile(InstanceProfileName=value)["InstanceProfile"]["Arn"]
            return iam.get_role(RoleName=value)["Role"]["Arn"]
        except ClientError as exc:
            if error_code(exc) != "NoSuchEntity":
                raise
    hint = (
        "create it (AWS Batch's 'ecsInstanceRole' with the AmazonEC2ContainerServiceforEC2Role policy)"
        if kind == "instance profile"
        else "create it, or remove the setting to use Batch's service-linked role"
    )
    raise FactoryError(f"the {kind} {value!r} ({setting} in factory.yaml) does not exist: {hint}, or set {setting} to an existing name/ARN")


def _is_service_linked(role: str | None) -> bool:
    """No role (Batch then uses its service-linked role) or that role's ARN."""
    return role is None or ":role/aws-service-role/batch.amazonaws.com/" in role


# ---------------------------------------------------------------------------------------
# The reconciler


@dataclass
class _Env:
    """Per-region context shared by the tiers of one run."""

    clients: Clients
    network: Network
    instance_role: str
    service_role: str | None
    spot_fleet_role: str | None
    compute_environments: list[dict[str, Any]]  # listed once per region (tiers never share one)


class _Run:
    def __init__(self, config: FactoryConfig, dry_run: bool, wait_timeout: float, poll: float, progress: Callable[[str], None] | None):
        self.config = config
        self.dry_run = dry_run
        self.wait_timeout = wait_timeout
        self.poll = poll
        self.progress = progress or (lambda _msg: None)

    # -- launch template ---------------------------------------------------------------

    def launch_template(self, ec2: Any, target: TierTarget, data: dict[str, Any], tags: dict[str, str], changes: list[Change]) -> dict[str, Any]:
        name = target.name
        with aws_errors(f"reading launch template {name}"):
            try:
                lts = ec2.describe_launch_templates(LaunchTemplateNames=[name])["LaunchTemplates"]
            except ClientError as exc:
                if "NotFound" not in error_code(exc):
                    raise
                lts = []
        if not lts:
            changes.append(Change("launch-template", name, "create", f"new: AMI {data['ImageId']}, {target.volume_gib} GiB gp3 encrypted, IMDSv2"))
            if self.dry_run:
                return {"name": name, "id": None, "version": 1}
            self.progress(f"creating launch template {name}")
            with aws_errors(f"creating launch template {name}"):
                lt = ec2.create_launch_template(
                    LaunchTemplateName=name,
                    VersionDescription=f"factory: {','.join(target.tasks)}",
                    LaunchTemplateData=data,
                    TagSpecifications=[{"ResourceType": "launch-template", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}],
                )["LaunchTemplate"]
            return {"name": name, "id": lt["LaunchTemplateId"], "version": int(lt["LatestVersionNumber"])}

        lt = lts[0]
        lt_id = lt["LaunchTemplateId"]
        have_tags = _tags(lt.get("Tags"))
        if have_tags.get(TAG_MANAGED) != "true":
            raise FactoryError(
                f"launch template {name} ({lt_id}) exists but is not managed by factory (no tag {TAG_MANAGED}=true): "
                "delete or rename it, or tag it to let factory manage it"
            )
        default_v, latest_v = int(lt["DefaultVersionNumber"]), int(lt["LatestVersionNumber"])
        with aws_errors(f"reading launch template {name} versions"):
            versions = ec2.describe_launch_template_versions(
                LaunchTemplateId=lt_id, Versions=sorted({str(default_v), str(latest_v)})
            )["LaunchTemplateVersions"]
        by_number = {int(v["VersionNumber"]): v["LaunchTemplateData"] for v in versions}
        diffs = _lt_differences(by_number.get(default_v, {}), data)
        version = default_v
        if not diffs:
            changes.append(Change("launch-template", name, "unchanged", f"version {default_v} is current"))
        elif latest_v != default_v and not _lt_differences(by_number.get(latest_v, {}), data):
            changes.append(Change("launch-template", name, "update", f"make version {latest_v} the default (left by an interrupted run): {'; '.join(diffs)}"))
            version = latest_v
            if not self.dry_run:
                with aws_errors(f"setting the default version of {name}"):
                    ec2.modify_launch_template(LaunchTemplateId=lt_id, DefaultVersion=str(latest_v))
        else:
            version = latest_v + 1
            changes.append(Change("launch-template", name, "update", f"new version {version} (default): {'; '.join(diffs)}"))
            if not self.dry_run:
                self.progress(f"adding version to launch template {name}")
                with aws_errors(f"adding a version to launch template {name}"):
                    made = ec2.create_launch_template_version(
                        LaunchTemplateId=lt_id,
                        VersionDescription=f"factory: {','.join(target.tasks)}",
                        LaunchTemplateData=data,
                    )["LaunchTemplateVersion"]
                    version = int(made["VersionNumber"])
                    ec2.modify_launch_template(LaunchTemplateId=lt_id, DefaultVersion=str(version))
        missing_tags = {k: v for k, v in tags.items() if have_tags.get(k) != v}
        if missing_tags:
            changes.append(Change("launch-template", name, "update", "tags: " + ", ".join(f"{k}={v}" for k, v in missing_tags.items())))
            if not self.dry_run:
                with aws_errors(f"tagging launch template {name}"):
                    ec2.create_tags(Resources=[lt_id], Tags=[{"Key": k, "Value": v} for k, v in missing_tags.items()])
        return {"name": name, "id": lt_id, "version": version}

    # -- compute environment -----------------------------------------------------------

    def desired_compute_resources(self, target: TierTarget, env: _Env, lt_name: str, lt_version: int) -> dict[str, Any]:
        b = target.batch
        spot = b.provisioning == "spot"
        cr: dict[str, Any] = {
            "type": "SPOT" if spot else "EC2",
            "allocationStrategy": b.allocation_strategy,
            "minvCpus": int(b.min_vcpus),
            "maxvCpus": int(b.max_vcpus),
            "instanceTypes": list(b.instance_types),
            "subnets": list(env.network.subnets),
            "securityGroupIds": list(env.network.security_groups),
            "instanceRole": env.instance_role,
            "launchTemplate": {"launchTemplateName": lt_name, "version": str(lt_version)},
            "ec2Configuration": [{"imageType": target.family.ecs_image_type}],
            "tags": {TAG_TIER: target.tier, TAG_MANAGED: "true", "Name": target.name},
        }
        if spot and b.spot_bid_percentage is not None:
            cr["bidPercentage"] = int(b.spot_bid_percentage)
        if spot and env.spot_fleet_role:
            cr["spotIamFleetRole"] = env.spot_fleet_role
        if self.config.batch.ec2_key_pair:
            cr["ec2KeyPair"] = self.config.batch.ec2_key_pair
        return cr

    @staticmethod
    def _norm(key: str, value: Any, lt_id: str | None = None) -> Any:
        if value is None:
            return None
        if key in ("instanceTypes", "subnets", "securityGroupIds"):
            return sorted(value)
        if key == "launchTemplate":
            # AWS may answer with the id, the name or both; compare what identifies it.
            return (str(value.get("version")),)
        if key == "ec2Configuration":
            return sorted((c.get("imageType"), c.get("imageIdOverride")) for c in value)
        if key in ("minvCpus", "maxvCpus", "bidPercentage"):
            return int(value)
        return value

    def ce_differences(self, have: Mapping[str, Any], want: Mapping[str, Any], lt: dict[str, Any]) -> dict[str, str]:
        """key -> 'old -> new' for every compute resource setting that differs."""
        out: dict[str, str] = {}
        for key in SCALING_KEYS + INFRA_KEYS + REPLACE_KEYS:
            a, b = self._norm(key, have.get(key)), self._norm(key, want.get(key))
            if key == "launchTemplate" and have.get(key):
                h = have[key]
                same_lt = h.get("launchTemplateName") == lt["name"] or (lt.get("id") and h.get("launchTemplateId") == lt["id"])
                if not same_lt:
                    a = ("other",)
            if a != b:
                if key == "launchTemplate":
                    out[key] = f"launch template version {have.get(key, {}).get('version')} -> {want[key]['version']}"
                else:
                    out[key] = f"{key} {have.get(key)!r} -> {want.get(key)!r}"
        return out

    def _wait_ce(self, batch: Any, name: str, want_state: str | None = None) -> dict[str, Any] | None:
        """Until the compute environment is VALID (and in want_state); moto answers VALID at once."""
        deadline = time.monotonic() + self.wait_timeout
        while True:
            with aws_errors(f"reading compute environment {name}"):
                ces = batch.describe_compute_environments(computeEnvironments=[name])["computeEnvironments"]
            if not ces:
                return None
            ce = ces[0]
            status = ce.get("status")
            if status == "INVALID":
                raise FactoryError(f"compute environment {name} is INVALID: {ce.get('statusReason', 'no reason given')}; fix it in the Batch console or its settings")
            if status == "VALID" and (want_state is None or ce.get("state") == want_state):
                return ce
            if time.monotonic() > deadline:
                raise FactoryError(f"compute environment {name} is still {status} after {self.wait_timeout:.0f}s; run `factory register` again later")
            time.sleep(self.poll)

    def list_compute_environments(self, batch: Any) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        with aws_errors("listing compute environments"):
            token = None
            while True:
                kw = {"nextToken": token} if token else {}
                page = batch.describe_compute_environments(**kw)
                out += page.get("computeEnvironments", [])
                token = page.get("nextToken")
                if not token:
                    break
        return out

    def compute_environment(
        self, batch: Any, target: TierTarget, env: _Env, lt: dict[str, Any], queue: dict[str, Any] | None, changes: list[Change]
    ) -> tuple[str, str | None, list[dict[str, Any]]]:
        """Returns (name, arn, old environments to retire)."""
        base = target.name
        want = self.desired_compute_resources(target, env, lt["name"], lt["version"])
        tags = target.tags
        all_ces = env.compute_environments
        by_name = {c["computeEnvironmentName"]: c for c in all_ces}
        ours = [
            c
            for c in all_ces
            if (c.get("tags") or {}).get(TAG_TIER) == target.tier
            and (c.get("tags") or {}).get(TAG_MANAGED) == "true"
            and c.get("status") not in ("DELETING", "DELETED")
        ]
        if base in by_name and by_name[base] not in ours and (by_name[base].get("tags") or {}).get(TAG_MANAGED) != "true":
            raise FactoryError(
                f"compute environment {base} exists but is not managed by factory (no tag {TAG_MANAGED}=true): delete or rename it"
            )
        queue_ces = [o["computeEnvironment"] for o in sorted((queue or {}).get("computeEnvironmentOrder", []), key=lambda o: o["order"])]

        def pick() -> dict[str, Any] | None:
            for arn in queue_ces:
                for c in ours:
                    if arn in (c["computeEnvironmentArn"], c["computeEnvironmentName"]):
                        return c
            for c in ours:  # a replacement an interrupted run created but did not put in the queue
                if not self.ce_differences(c.get("computeResources", {}), want, lt) and c.get("serviceRole") == env.service_role:
                    return c
            for c in ours:
                if c["computeEnvironmentName"] == base:
                    return c
            return ours[0] if ours else None

        current = pick()
        if current is None:
            changes.append(Change("compute-environment", base, "create", f"new: {want['type']} {want['allocationStrategy']}, {want['minvCpus']}-{want['maxvCpus']} vCPUs, launch template {lt['name']} v{lt['version']}"))
            arn = self._create_ce(batch, base, want, tags, env)
            return base, arn, []

        name, arn = current["computeEnvironmentName"], current["computeEnvironmentArn"]
        have = current.get("computeResources", {})
        diffs = self.ce_differences(have, want, lt)
        role_changed = not (
            current.get("serviceRole") == env.service_role or (_is_service_linked(env.service_role) and _is_service_linked(current.get("serviceRole")))
        )
        retire = [c for c in ours if c is not current]
        infra = [k for k in diffs if k in INFRA_KEYS]
        blockers: list[str] = []
        if any(k in REPLACE_KEYS for k in diffs):
            blockers.append("spotIamFleetRole cannot be updated")
        if role_changed:
            blockers.append(f"service role {current.get('serviceRole')} -> {env.service_role or 'service-linked'}")
        if infra:
            if have.get("allocationStrategy") not in INFRA_UPDATE_STRATEGIES:
                blockers.append(f"allocation strategy {have.get('allocationStrategy')} allows no infrastructure update")
            elif want["allocationStrategy"] not in INFRA_UPDATE_STRATEGIES:
                blockers.append(f"cannot update to allocation strategy {want['allocationStrategy']}")
            if not _is_service_linked(current.get("serviceRole")):
                blockers.append("infrastructure updates need Batch's service-linked role")

        if blockers:
            new_name = f"{base}-{_settings_hash(want, env.service_role)}"
            reason = "; ".join(diffs.values()) or "service role"
            changes.append(Change("compute-environment", new_name, "replace", f"replaces {name} ({reason}): {'; '.join(blockers)}"))
            existing = by_name.get(new_name)
            if existing is not None and existing.get("status") not in ("DELETING", "DELETED"):
                new_arn = existing["computeEnvironmentArn"]
            else:
                new_arn = self._create_ce(batch, new_name, want, tags, env)
            return new_name, new_arn, [c for c in ours if c["computeEnvironmentName"] != new_name]

        updates: dict[str, Any] = {k: want[k] for k in diffs}
        if "launchTemplate" in updates:
            # New instances come from the new version only after an infrastructure update.
            updates["updateToLatestImageVersion"] = True
        if current.get("state") != "ENABLED":
            diffs["state"] = f"state {current.get('state')} -> ENABLED"
        if diffs:
            kind = "infrastructure update" if infra else "scaling update"
            changes.append(Change("compute-environment", name, "update", f"{kind}: {'; '.join(diffs.values())}"))
            if not self.dry_run:
                self.progress(f"updating compute environment {name}")
                kw: dict[str, Any] = {"computeEnvironment": name, "state": "ENABLED"}
                if updates:
                    kw["computeResources"] = updates
                with aws_errors(f"updating compute environment {name}"):
                    batch.update_compute_environment(**kw)
                self._wait_ce(batch, name)
        else:
            changes.append(Change("compute-environment", name, "unchanged", f"launch template v{lt['version']}, settings match"))
        self._sync_batch_tags(batch, "compute-environment", name, arn, current.get("tags"), tags, changes)
        return name, arn, retire

    def _create_ce(self, batch: Any, name: str, cr: dict[str, Any], tags: dict[str, str], env: _Env) -> str | None:
        if self.dry_run:
            return None
        self.progress(f"creating compute environment {name}")
        kw: dict[str, Any] = {"computeEnvironmentName": name, "type": "MANAGED", "state": "ENABLED", "computeResources": cr, "tags": tags}
        if env.service_role:
            kw["serviceRole"] = env.service_role
        with aws_errors(f"creating compute environment {name}"):
            try:
                arn = batch.create_compute_environment(**kw)["computeEnvironmentArn"]
            except ClientError as exc:
                if "ServiceRole is required" in error_message(exc):
                    raise FactoryError(
                        f"creating compute environment {name}: this endpoint needs a service role "
                        "(moto's local cloud does; real AWS uses the service-linked role): set batch.service_role in factory.yaml"
                    ) from None
                raise
        self._wait_ce(batch, name)
        return arn

    def retire(self, batch: Any, olds: list[dict[str, Any]], queue_name: str, changes: list[Change]) -> None:
        """Disable, then delete, compute environments a replacement left behind."""
        for ce in olds:
            name = ce["computeEnvironmentName"]
            changes.append(Change("compute-environment", name, "delete", f"replaced; no longer behind {queue_name}"))
            if self.dry_run:
                continue
            self.progress(f"retiring compute environment {name}")
            if ce.get("state") != "DISABLED":
                with aws_errors(f"disabling compute environment {name}"):
                    batch.update_compute_environment(computeEnvironment=name, state="DISABLED")
                self._wait_ce(batch, name, want_state="DISABLED")
            with aws_errors(f"deleting compute environment {name}"):
                batch.delete_compute_environment(computeEnvironment=name)

    # -- job queue ---------------------------------------------------------------------

    def find_queue(self, batch: Any, name: str) -> dict[str, Any] | None:
        with aws_errors(f"reading job queue {name}"):
            queues = batch.describe_job_queues(jobQueues=[name])["jobQueues"]
        queues = [q for q in queues if q.get("status") not in ("DELETING", "DELETED")]
        if queues and (queues[0].get("tags") or {}).get(TAG_MANAGED) != "true":
            raise FactoryError(f"job queue {name} exists but is not managed by factory (no tag {TAG_MANAGED}=true): delete or rename it")
        return queues[0] if queues else None

    def job_queue(self, batch: Any, target: TierTarget, queue: dict[str, Any] | None, ce_name: str, ce_arn: str | None, changes: list[Change]) -> None:
        name = target.name
        tags = target.tags
        priority = self.config.batch.queue_priority
        order = [{"order": 1, "computeEnvironment": ce_arn or ce_name}]
        if queue is None:
            changes.append(Change("job-queue", name, "create", f"new, in front of {ce_name}"))
            if not self.dry_run:
                self.progress(f"creating job queue {name}")
                with aws_errors(f"creating job queue {name}"):
                    batch.create_job_queue(jobQueueName=name, state="ENABLED", priority=priority, computeEnvironmentOrder=order, tags=tags)
                self._wait_queue(batch, name)
            return
        diffs = []
        have_order = [o["computeEnvironment"] for o in sorted(queue.get("computeEnvironmentOrder", []), key=lambda o: o["order"])]
        if [a.split("/")[-1] for a in have_order] != [ce_name]:
            diffs.append(f"compute environment {', '.join(a.split('/')[-1] for a in have_order) or 'none'} -> {ce_name}")
        if queue.get("state") != "ENABLED":
            diffs.append(f"state {queue.get('state')} -> ENABLED")
        if int(queue.get("priority", priority)) != priority:
            diffs.append(f"priority {queue.get('priority')} -> {priority}")
        if diffs:
            changes.append(Change("job-queue", name, "update", "; ".join(diffs)))
            if not self.dry_run:
                with aws_errors(f"updating job queue {name}"):
                    batch.update_job_queue(jobQueue=name, state="ENABLED", priority=priority, computeEnvironmentOrder=order)
                self._wait_queue(batch, name)
        else:
            changes.append(Change("job-queue", name, "unchanged", f"in front of {ce_name}"))
        self._sync_batch_tags(batch, "job-queue", name, queue["jobQueueArn"], queue.get("tags"), tags, changes)

    def _sync_batch_tags(
        self, batch: Any, resource: str, name: str, arn: str, have: dict[str, str] | None, want: dict[str, str], changes: list[Change]
    ) -> None:
        """Add the tags a Batch resource lacks (or has with another value); one change, one call."""
        missing = {k: v for k, v in want.items() if (have or {}).get(k) != v}
        if not missing:
            return
        changes.append(Change(resource, name, "update", "tags: " + ", ".join(f"{k}={v}" for k, v in missing.items())))
        if not self.dry_run:
            with aws_errors(f"tagging {resource.replace('-', ' ')} {name}"):
                batch.tag_resource(resourceArn=arn, tags=missing)

    def _wait_queue(self, batch: Any, name: str) -> None:
        deadline = time.monotonic() + self.wait_timeout
        while True:
            with aws_errors(f"reading job queue {name}"):
                queues = batch.describe_job_queues(jobQueues=[name])["jobQueues"]
            status = queues[0].get("status") if queues else None
            if status in (None, "VALID"):  # moto leaves status unset on some versions
                return
            if status == "INVALID":
                raise FactoryError(f"job queue {name} is INVALID: {queues[0].get('statusReason', 'no reason given')}")
            if time.monotonic() > deadline:
                raise FactoryError(f"job queue {name} is still {status} after {self.wait_timeout:.0f}s; run `factory register` again later")
            time.sleep(self.poll)


def _settings_hash(cr: Mapping[str, Any], service_role: str | None) -> str:
    """A short, stable hash of a compute environment's settings (its replacement's name suffix)."""
    body = {k: v for k, v in cr.items() if k not in SCALING_KEYS}
    body["serviceRole"] = service_role
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:8]


# ---------------------------------------------------------------------------------------
# Entry points


def register_targets(
    targets: Sequence[TierTarget],
    clients: Clients,
    ami_overrides: Mapping[str, str] | None = None,
    dry_run: bool = False,
    *,
    config: FactoryConfig | None = None,
    wait_timeout: float = 900.0,
    poll: float = 5.0,
    progress: Callable[[str], None] | None = None,
) -> RegisterResult:
    """Plan (dry_run) or apply the launch template, compute environment and queue of each tier."""
    config = config or FactoryConfig()
    run = _Run(config, dry_run, wait_timeout, poll, progress)
    overrides = dict(ami_overrides or {})
    envs: dict[str, _Env] = {}
    regional = {clients.region: clients}
    results: list[TierResult] = []
    for target in targets:
        # Tiers in another region get their own clients, at the caller's endpoint.
        cl = regional.setdefault(target.region, Clients(region=target.region, endpoint_url=clients.endpoint_url))
        if target.region not in envs:
            envs[target.region] = _Env(
                clients=cl,
                network=resolve_network(cl, target.region, config),
                instance_role=_resolve_role(cl, config.batch.instance_role, "instance profile", "batch.instance_role") or "",
                service_role=_resolve_role(cl, config.batch.service_role, "role", "batch.service_role"),
                spot_fleet_role=_resolve_role(cl, config.batch.spot_fleet_role, "role", "batch.spot_fleet_role"),
                compute_environments=run.list_compute_environments(cl.batch()),
            )
        env = envs[target.region]
        ec2, batch = cl.ec2(), cl.batch()
        ami, ami_source, notes = _resolve_ami(cl, target, overrides)
        changes: list[Change] = []
        data = launch_template_data(target, ami, config.boot_commands)
        lt = run.launch_template(ec2, target, data, target.tags, changes)
        queue = run.find_queue(batch, target.name)
        ce_name, ce_arn, olds = run.compute_environment(batch, target, env, lt, queue, changes)
        run.job_queue(batch, target, queue, ce_name, ce_arn, changes)
        run.retire(batch, olds, target.name, changes)
        results.append(
            TierResult(
                tier=target.tier,
                tasks=target.tasks,
                region=target.region,
                ami_id=ami,
                ami_source=ami_source,
                volume_gib=target.volume_gib,
                launch_template=lt,
                compute_environment=ce_name,
                job_queue=target.name,
                network=env.network,
                changes=changes,
                notes=notes,
            )
        )
    return RegisterResult(results, dry_run, config.source)


def register_tasks(
    specs: Sequence[Any],
    clients: Clients,
    ami_overrides: Mapping[str, str] | None = None,
    dry_run: bool = False,
    *,
    config: FactoryConfig | None = None,
    all_specs: Sequence[Any] | None = None,
    wait_timeout: float = 900.0,
    poll: float = 5.0,
    progress: Callable[[str], None] | None = None,
) -> RegisterResult:
    """Register the tiers that hold `specs` (the call `factory bake` ends with).

    Tiers are chosen over `all_specs` (default: every spec in the folders `specs` come
    from), so registering one task gives the same tiers as `register --all`.
    ami_overrides maps task -> AMI id (e.g. the AMI bake just made). `config` defaults to
    ./factory.yaml when present (factory.config.load_config), else every default.
    """
    if config is None:
        from factory.config import load_config

        config = load_config()
    if not specs:
        raise UsageError("no tasks to register: name a TASK or pass --all")
    from factory.tiers import tiers_for

    if all_specs is None:
        all_specs = _sibling_specs(specs)
    tiers, _ = tiers_for(all_specs, config.max_tiers)
    pool = {s.name: s for s in all_specs}
    pool.update({s.name: s for s in specs})
    wanted = {s.name for s in specs}
    chosen = [t for t in tiers if wanted & set(t.tasks)]
    uncovered = wanted - {n for t in chosen for n in t.tasks}
    if uncovered:
        raise FactoryError(f"task(s) {', '.join(sorted(uncovered))} are in no tier; run `factory size --all` to see the tiers")
    members = [pool[n] for t in chosen for n in t.tasks if n in pool]
    targets = targets_for(members, chosen)
    return register_targets(
        targets, clients, ami_overrides, dry_run, config=config, wait_timeout=wait_timeout, poll=poll, progress=progress
    )


def _sibling_specs(specs: Sequence[Any]) -> list[Any]:
    from factory.spec import load_specs

    folders = sorted({s.path.parent for s in specs})
    found = {s.name: s for s in load_specs(folders)}
    found.update({s.name: s for s in specs})
    return list(found.values())


# ---------------------------------------------------------------------------------------
# Prune


@dataclass
class PruneResult:
    dry_run: bool
    keep: int
    changes: list[Change]

    def to_json(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "keep": self.keep, "changes": [c.to_json() for c in self.changes]}


def prune(clients: Clients, keep: int = 3, dry_run: bool = True) -> PruneResult:
    """Delete launch template versions and deregister factory AMIs nothing uses any more.

    Kept: each managed launch template's default version, every version a compute
    environment pins, and the newest `keep`; each task's newest `keep` AMIs and every AMI
    a kept version uses. AMI snapshots are deleted with their AMI. Only resources tagged
    by factory are considered. `dry_run` (the CLI's default) lists and deletes nothing.
    """
    if keep < 1:
        raise UsageError(f"--keep must be at least 1 (got {keep})")
    ec2, batch = clients.ec2(), clients.batch()
    changes: list[Change] = []
    with aws_errors("listing factory's launch templates"):
        lts = ec2.describe_launch_templates(Filters=[{"Name": f"tag:{TAG_MANAGED}", "Values": ["true"]}])["LaunchTemplates"]
        ces = batch.describe_compute_environments()["computeEnvironments"]
    pinned: dict[str, set[str]] = {}
    for ce in ces:
        spec = (ce.get("computeResources") or {}).get("launchTemplate") or {}
        for key in (spec.get("launchTemplateName"), spec.get("launchTemplateId")):
            if key:
                pinned.setdefault(key, set()).add(str(spec.get("version")))
    used_amis: set[str] = set()
    for lt in lts:
        lt_id, name = lt["LaunchTemplateId"], lt["LaunchTemplateName"]
        with aws_errors(f"reading launch template {name} versions"):
            versions = ec2.describe_launch_template_versions(LaunchTemplateId=lt_id)["LaunchTemplateVersions"]
        versions.sort(key=lambda v: int(v["VersionNumber"]), reverse=True)
        keep_numbers = {str(v["VersionNumber"]) for v in versions[:keep]}
        keep_numbers.add(str(lt["DefaultVersionNumber"]))
        keep_numbers |= pinned.get(name, set()) | pinned.get(lt_id, set())
        doomed = [str(v["VersionNumber"]) for v in versions if str(v["VersionNumber"]) not in keep_numbers]
        for v in versions:
            if str(v["VersionNumber"]) in keep_numbers and v["LaunchTemplateData"].get("ImageId"):
                used_amis.add(v["LaunchTemplateData"]["ImageId"])
        if doomed:
            changes.append(Change("launch-template", name, "delete", f"versions {', '.join(sorted(doomed, key=int))} (not default, not pinned, not among the newest {keep})"))
            if not dry_run:
                with aws_errors(f"deleting versions of launch template {name}"):
                    for i in range(0, len(doomed), 200):
                        ec2.delete_launch_template_versions(LaunchTemplateId=lt_id, Versions=doomed[i : i + 200])
    with aws_errors("listing factory's AMIs"):
        images = ec2.describe_images(Owners=["self"], Filters=[{"Name": "tag-key", "Values": [TAG_TASK]}])["Images"]
    by_task: dict[str, list[dict[str, Any]]] = {}
    for image in images:
        by_task.setdefault(_tags(image.get("Tags")).get(TAG_TASK, "?"), []).append(image)
    for task, group in sorted(by_task.items()):
        group.sort(key=lambda i: (i.get("CreationDate", ""), i["ImageId"]), reverse=True)
        for image in group[keep:]:
            if image["ImageId"] in used_amis:
                continue
            snapshots = [m["Ebs"]["SnapshotId"] for m in image.get("BlockDeviceMappings", []) if m.get("Ebs", {}).get("SnapshotId")]
            changes.append(Change("ami", image["ImageId"], "delete", f"task {task}, {image.get('CreationDate', '?')}: older than the newest {keep} and in no kept launch template version"))
            if not dry_run:
                with aws_errors(f"deregistering AMI {image['ImageId']}"):
                    ec2.deregister_image(ImageId=image["ImageId"])
                    for snap in snapshots:
                        ec2.delete_snapshot(SnapshotId=snap)
    return PruneResult(dry_run, keep, changes)
