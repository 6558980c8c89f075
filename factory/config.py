"""The register step's settings file, `factory.yaml`: where compute environments run.

Everything here is optional. Without a file (or without a `batch.subnets` list) the
register step uses the region's default VPC and says so. The format, with defaults:

    batch:
      subnets: [subnet-0abc..., subnet-0def...]   # both or neither; default: the default VPC's
      security_groups: [sg-0123...]               #   subnets and its `default` security group
      instance_role: ecsInstanceRole              # instance profile name or ARN
      service_role: null                          # IAM role name/ARN; null = Batch's service-linked role
      spot_fleet_role: null                       # only for SPOT with allocation_strategy BEST_FIT
      ec2_key_pair: null                          # an EC2 key pair for SSH into Batch hosts
      queue_priority: 1
      update_timeout_minutes: 2880                # running jobs' time on an old instance after an AMI roll (max 7200)
      terminate_jobs_on_update: false             # true: stop running jobs at once when the image rolls
    builder:                                      # the instance Packer bakes on
      instance_types: {x86_64: t3.medium, arm64: t4g.medium}   # at least 4 GiB of memory
      subnet: null                                # default: the first of batch.subnets, else the default VPC
      ssh_interface: public_ip                    # public_ip | private_ip | session_manager
      public_ip: null                             # true | false; null: true with public_ip, else the subnet's own setting
      instance_profile: null                      # instance profile name; session_manager needs one
      kms_key: null                               # KMS key (id, ARN or alias/...) for the AMI; null: the account's EBS default
    launch_template:
      boot_commands: []                           # shell lines run at boot (MIME multi-part user data)
    tiers:
      max_tiers: null                             # cap on storage tiers across all specs
    prune:
      keep: 3                                     # newest AMIs / launch template versions kept
      builder_hours: 6                            # a builder older than this was left by a killed bake
    distribute:                                   # factory/distribution.py; a spec may override each field
      regions: []                                 # regions the AMI is copied to, besides the spec's own
      kms_keys: {}                                # region -> customer-managed KMS key for the copy there
      share_with: []                              # account ids, organization / OU ARNs (never `all`)
      copy_to: []                                 # {account, role, register, networks}: accounts that get their own copy
      networks: {}                                # target region -> {subnets, security_groups}; default: its default VPC

docs/register.md describes each setting. Errors name the file, the field and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from factory.errors import FactoryError, UsageError
from factory.families import BUILDER_INSTANCE_TYPE

DEFAULT_CONFIG_NAME = "factory.yaml"

_SCHEMA: dict[str, dict[str, str]] = {
    "batch": {
        "subnets": "list of subnet ids (subnet-...)",
        "security_groups": "list of security group ids (sg-...)",
        "instance_role": "instance profile name or ARN",
        "service_role": "IAM role name or ARN, or null",
        "spot_fleet_role": "IAM role name or ARN, or null",
        "ec2_key_pair": "EC2 key pair name, or null",
        "queue_priority": "integer >= 0",
        "update_timeout_minutes": "integer from 1 to 7200 (AWS Batch's updatePolicy.jobExecutionTimeoutMinutes)",
        "terminate_jobs_on_update": "true or false",
    },
    "builder": {
        "instance_types": "mapping of architecture (x86_64, arm64) to an EC2 instance type",
        "subnet": "subnet id (subnet-...), or null",
        "ssh_interface": "one of public_ip, private_ip, session_manager",
        "public_ip": "true, false or null",
        "instance_profile": "instance profile name, or null",
        "kms_key": "KMS key id, ARN or alias/NAME, or null",
    },
    "launch_template": {"boot_commands": "list of shell command lines"},
    "tiers": {"max_tiers": "integer >= 1, or null"},
    "prune": {"keep": "integer >= 1", "builder_hours": "number of hours >= 0"},
    "distribute": {
        "regions": "list of AWS regions the AMI is copied to",
        "kms_keys": "mapping of region to a customer-managed KMS key",
        "share_with": "list of account ids, organization ARNs or OU ARNs",
        "copy_to": "list of {account, role, register, networks}",
        "networks": "mapping of target region to {subnets, security_groups}",
    },
}


class ConfigError(FactoryError):
    """The config file is unreadable or a field is wrong (exit 1)."""


@dataclass(frozen=True)
class BatchConfig:
    subnets: tuple[str, ...] = ()
    security_groups: tuple[str, ...] = ()
    instance_role: str = "ecsInstanceRole"
    service_role: str | None = None
    spot_fleet_role: str | None = None
    ec2_key_pair: str | None = None
    queue_priority: int = 1
    # AWS Batch's updatePolicy for infrastructure updates (an AMI or launch template roll):
    # jobs running on an old instance get this long before it is replaced. AWS's own
    # default is 30 minutes, which cuts off most genomics jobs; two days is ours.
    update_timeout_minutes: int = 2880
    terminate_jobs_on_update: bool = False

    @property
    def update_policy(self) -> dict[str, Any]:
        """The updatePolicy sent with every infrastructure update."""
        return {"terminateJobsOnUpdate": self.terminate_jobs_on_update, "jobExecutionTimeoutMinutes": self.update_timeout_minutes}

    @property
    def has_network(self) -> bool:
        return bool(self.subnets)


DEFAULT_BUILDER_INSTANCE_TYPES = BUILDER_INSTANCE_TYPE  # 4 GiB: see factory/families.py
SSH_INTERFACES = ("public_ip", "private_ip", "session_manager")


@dataclass(frozen=True)
class BuilderConfig:
    """Where and on what Packer's builder instance runs (docs/register.md, `builder:`)."""

    instance_types: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_BUILDER_INSTANCE_TYPES))
    subnet: str | None = None  # None: the first of batch.subnets, else the default VPC
    subnet_source: str = "default VPC"  # says where `subnet` came from
    ssh_interface: str = "public_ip"
    public_ip: bool | None = True  # None: the subnet's own setting (private_ip, session_manager)
    instance_profile: str | None = None
    kms_key: str | None = None


@dataclass(frozen=True)
class FactoryConfig:
    path: Path | None = None  # None: no file, every default
    batch: BatchConfig = field(default_factory=BatchConfig)
    builder: BuilderConfig = field(default_factory=BuilderConfig)
    boot_commands: tuple[str, ...] = ()
    max_tiers: int | None = None
    prune_keep: int = 3
    prune_builder_hours: float = 6.0
    distribute: Any = None  # factory.distribution.Distribution; None: nowhere else

    @property
    def source(self) -> str:
        return str(self.path) if self.path else "defaults (no factory.yaml)"

    def distribution_for(self, spec: Any):
        """The spec's checked distribution (factory.distribution.settle): this file's
        `distribute:` with the spec's fields over it."""
        from factory import distribution

        return distribution.settle(self.distribute or distribution.Distribution(), self.source, spec, self.builder.kms_key)


def load_config(path: Path | str | None = None, search_dir: Path | str = ".") -> FactoryConfig:
    """Read `path`, or `<search_dir>/factory.yaml` when it exists, or return the defaults.

    An explicit `path` that does not exist is a UsageError (exit 2); a file whose
    content is wrong is a ConfigError naming the file, the field and the fix.
    """
    if path is None:
        candidate = Path(search_dir) / DEFAULT_CONFIG_NAME
        if not candidate.is_file():
            return FactoryConfig()
        path = candidate
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"config file {path} not found: pass an existing file to --config, or omit it")
    # The same defensive reader as the specs: size, encoding, depth, aliases, duplicate
    # keys and absurd numbers are refused with a line and column, never a traceback.
    from factory.yamlsafe import YamlProblem, read_yaml

    try:
        data = read_yaml(path, what="a factory config", empty=None)
    except YamlProblem as exc:
        where = f" (line {exc.line}, column {exc.column})" if exc.line else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {exc.message}") from None
    except OSError as exc:
        raise UsageError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    return parse_config(data, path.resolve())


def parse_config(data: Any, path: Path | None) -> FactoryConfig:
    """Check a loaded mapping and turn it into a FactoryConfig; collects every problem."""
    from factory import distribution

    where = str(path) if path else "config"
    problems: list[str] = []

    def bad(field_path: str, message: str) -> None:
        problems.append(f"{where}: {field_path}: {message}")

    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: the top level must be a mapping with keys {', '.join(_SCHEMA)}")
    sections: dict[str, dict[str, Any]] = {}
    for key, value in data.items():
        if key not in _SCHEMA:
            bad(str(key), f"unknown section; expected one of {', '.join(_SCHEMA)}")
            continue
        if value is None:
            value = {}
        if not isinstance(value, dict):
            bad(key, "must be a mapping")
            continue
        for sub in value:
            if sub not in _SCHEMA[key]:
                bad(f"{key}.{sub}", f"unknown setting; expected one of {', '.join(_SCHEMA[key])}")
        sections[key] = value

    def id_list(section: str, name: str, prefix: str) -> tuple[str, ...]:
        value = sections.get(section, {}).get(name)
        if value is None:
            return ()
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            bad(f"{section}.{name}", f"expected a {_SCHEMA[section][name]}, got {value!r}")
            return ()
        for v in value:
            if not v.startswith(prefix):
                bad(f"{section}.{name}", f"{v!r} is not a {prefix}... id; copy the id from the EC2 console or `aws ec2 describe-*`")
        return tuple(value)

    def opt_str(section: str, name: str, default: str | None) -> str | None:
        value = sections.get(section, {}).get(name, default)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            bad(f"{section}.{name}", f"expected a {_SCHEMA[section][name]}, got {value!r}")
            return default
        return value

    def opt_int(section: str, name: str, default: int | None, minimum: int, allow_null: bool) -> int | None:
        value = sections.get(section, {}).get(name, default)
        if value is None and allow_null:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            bad(f"{section}.{name}", f"expected an {_SCHEMA[section][name]}, got {value!r}")
            return default
        return value

    def opt_hours(section: str, name: str, default: float) -> float:
        value = sections.get(section, {}).get(name, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            bad(f"{section}.{name}", f"expected a {_SCHEMA[section][name]}, got {value!r}")
            return default
        return float(value)

    subnets = id_list("batch", "subnets", "subnet-")
    groups = id_list("batch", "security_groups", "sg-")
    if bool(subnets) != bool(groups):
        bad(
            "batch",
            "give both `subnets` and `security_groups`, or neither (then the default VPC's subnets "
            "and its `default` security group are used)",
        )
    instance_role = opt_str("batch", "instance_role", "ecsInstanceRole") or "ecsInstanceRole"
    commands = sections.get("launch_template", {}).get("boot_commands") or []
    if isinstance(commands, str):
        commands = [commands]
    if not isinstance(commands, list) or not all(isinstance(c, str) for c in commands):
        bad("launch_template.boot_commands", f"expected a list of shell command lines, got {commands!r}")
        commands = []

    timeout = opt_int("batch", "update_timeout_minutes", 2880, 1, False) or 2880
    if timeout > 7200:
        bad("batch.update_timeout_minutes", f"expected an {_SCHEMA['batch']['update_timeout_minutes']}, got {timeout!r}")
    terminate = sections.get("batch", {}).get("terminate_jobs_on_update", False)
    if not isinstance(terminate, bool):
        bad("batch.terminate_jobs_on_update", f"expected true or false, got {terminate!r}")
        terminate = False
    batch = BatchConfig(
        subnets=subnets,
        security_groups=groups,
        instance_role=instance_role,
        service_role=opt_str("batch", "service_role", None),
        spot_fleet_role=opt_str("batch", "spot_fleet_role", None),
        ec2_key_pair=opt_str("batch", "ec2_key_pair", None),
        queue_priority=opt_int("batch", "queue_priority", 1, 0, False) or 0,
        update_timeout_minutes=min(timeout, 7200),
        terminate_jobs_on_update=terminate,
    )
    builder = _builder(sections.get("builder", {}), batch, bad)
    config = FactoryConfig(
        path=path,
        batch=batch,
        builder=builder,
        boot_commands=tuple(commands),
        max_tiers=opt_int("tiers", "max_tiers", None, 1, True),
        prune_keep=opt_int("prune", "keep", 3, 1, False) or 3,
        prune_builder_hours=opt_hours("prune", "builder_hours", 6.0),
        distribute=distribution.parse(sections.get("distribute"), bad) if "distribute" in sections else None,
    )
    if problems:
        raise ConfigError("\n".join(problems) + "\nSee docs/register.md, 'Config file'.")
    return config


def _builder(section: dict[str, Any], batch: BatchConfig, bad) -> BuilderConfig:
    """The `builder:` section, defaults filled in: the subnet from `batch.subnets`, the
    public address from the SSH interface."""
    import re

    types = dict(DEFAULT_BUILDER_INSTANCE_TYPES)
    given = section.get("instance_types")
    if given is not None:
        if not isinstance(given, dict):
            bad("builder.instance_types", f"expected a {_SCHEMA['builder']['instance_types']}, e.g. {{x86_64: m6i.large}}, got {given!r}")
        else:
            for arch, itype in given.items():
                if arch not in DEFAULT_BUILDER_INSTANCE_TYPES:
                    bad(f"builder.instance_types.{arch}", "unknown architecture; expected x86_64 or arm64")
                elif not isinstance(itype, str) or not re.fullmatch(r"[a-z][a-z0-9-]*\.[a-z0-9]+", itype):
                    bad(f"builder.instance_types.{arch}", f"{itype!r} is not an EC2 instance type such as t3.medium")
                else:
                    types[arch] = itype

    def opt_str(name: str) -> str | None:
        value = section.get(name)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            bad(f"builder.{name}", f"expected a {_SCHEMA['builder'][name]}, got {value!r}")
            return None
        return value

    subnet = opt_str("subnet")
    source = "builder.subnet"
    if subnet is not None and not subnet.startswith("subnet-"):
        bad("builder.subnet", f"{subnet!r} is not a subnet-... id; copy the id from the EC2 console or `aws ec2 describe-subnets`")
    if subnet is None and batch.subnets:
        subnet, source = batch.subnets[0], "batch.subnets"
    elif subnet is None:
        source = "default VPC"
    interface = section.get("ssh_interface", "public_ip")
    if interface not in SSH_INTERFACES:
        bad("builder.ssh_interface", f"expected one of {', '.join(SSH_INTERFACES)}, got {interface!r}")
        interface = "public_ip"
    public_ip = section.get("public_ip")
    if public_ip is not None and not isinstance(public_ip, bool):
        bad("builder.public_ip", f"expected true, false or null, got {public_ip!r}")
        public_ip = None
    if public_ip is None and interface == "public_ip":
        public_ip = True
    if interface != "public_ip" and source == "default VPC":
        # The default VPC's subnets have no NAT: a builder there without a public address
        # never reaches Systems Manager (its agent never connects) nor the installers.
        bad("builder.subnet", f"ssh_interface {interface} needs a subnet (builder.subnet or batch.subnets): without one "
            "the builder starts in the default VPC with no public address and no way out. Name a subnet whose route "
            "table reaches a NAT gateway (or has VPC endpoints for ssm, ssmmessages and ec2messages) and that allows "
            "egress on 443 to the Miniconda and conda-forge installers and to ECR; or use ssh_interface: public_ip")
    if interface == "public_ip" and public_ip is False:
        bad("builder.public_ip", "false, but ssh_interface is public_ip: Packer could not reach the builder; "
            "use ssh_interface: private_ip (from inside the VPC) or session_manager")
    profile = opt_str("instance_profile")
    if interface == "session_manager" and not profile:
        bad("builder.instance_profile", "ssh_interface session_manager needs an instance profile whose role has "
            "AmazonSSMManagedInstanceCore; name it here")
    return BuilderConfig(
        instance_types=types, subnet=subnet, subnet_source=source, ssh_interface=interface,
        public_ip=public_ip, instance_profile=profile, kms_key=opt_str("kms_key"),
    )
