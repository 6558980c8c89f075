"""`distribute:`: where a baked AMI goes besides its own region and who may launch it.

The settings come from factory.yaml's `distribute:` section, and a spec's own `distribute:`
replaces any field it names (docs/register.md, "Distribution"):

    distribute:
      regions: [us-west-2, eu-west-1]                  # besides the spec's own region
      kms_keys: {us-east-1: alias/factory-ami, us-west-2: alias/factory-ami, eu-west-1: alias/factory-ami}
      share_with: ["111122223333", "arn:aws:organizations::111122223333:organization/o-abc123def4"]
      networks:                                        # where a target region registers (default: its default VPC)
        us-west-2: {subnets: [subnet-0abc...], security_groups: [sg-0123...]}
      copy_to:                                         # accounts that get their own copy
        - {account: "444455556666", role: "arn:aws:iam::444455556666:role/factory-distribute", register: true,
           networks: {us-east-1: {subnets: [subnet-...], security_groups: [sg-...]}}}   # that account's, per region

`check(dist, home_region, home_key, where)` refuses, before any instance starts, what AWS
would refuse after the bake (each with the file, the field and the fix):
- sharing with everyone (`all`): factory never makes an AMI public;
- sharing or copying an AMI encrypted with the AWS-managed key `aws/ebs` (or the account's
  default key, which factory cannot vouch for): "You can't share AMIs that are backed by
  snapshots that are encrypted with the default AWS managed key" (EC2 User Guide, "Share an
  AMI with specific AWS accounts", Considerations);
- a target region without a key: every factory AMI is encrypted (packer/factory.pkr.hcl
  `encrypt_boot`), KMS keys are regional, and a copy without one falls back to the region's
  `aws/ebs` (hashicorp/packer-plugin-amazon#270);
- a region, key or account in another partition (aws, aws-cn, aws-us-gov): CopyImage does
  not cross partitions (EC2 API reference, CopyImage; CreateStoreImageTask is the way);
- account ids that are not 12 digits, organization and OU ARNs of the wrong shape
  (IAM's `arn:PARTITION:organizations::ACCOUNT:organization/o-ID` and
  `.../ou/o-ID/ou-ROOT-ID`; AWS Organizations API reference, Organization and
  OrganizationalUnit `Arn` patterns), roles that are not in their account;
- a network (`networks`, a copy_to entry's `networks`) for a region the copies do not go
  to, for the home region (that is `batch.subnets`), ids of the wrong shape, subnets
  without security groups or the reverse.
No AWS call here: `factory.distribute` checks the keys themselves (DescribeKey) before a bake.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any, Callable

FIELDS = ("regions", "kms_keys", "share_with", "copy_to", "networks")
COPY_TO_FIELDS = ("account", "role", "register", "networks")
NETWORK_FIELDS = ("subnets", "security_groups")
AWS_MANAGED_EBS_KEY = "alias/aws/ebs"

_REGION = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-\d{1,2}$")
_ACCOUNT = re.compile(r"^\d{12}$")
_ORG = re.compile(r"^arn:(aws|aws-cn|aws-us-gov):organizations::(\d{12}):organization/o-[a-z0-9]{10,32}$")
_OU = re.compile(r"^arn:(aws|aws-cn|aws-us-gov):organizations::(\d{12}):ou/o-[a-z0-9]{10,32}/ou-[0-9a-z]{4,32}-[a-z0-9]{8,32}$")
_ROLE = re.compile(r"^arn:(aws|aws-cn|aws-us-gov):iam::(\d{12}):role/[\w+=,.@/-]{1,512}$")
_KEY_ARN = re.compile(r"^arn:(aws|aws-cn|aws-us-gov):kms:([a-z0-9-]+):(\d{12}):(key/[a-zA-Z0-9-]+|alias/[\w/+=,.@-]+)$")
_KEY_ID = re.compile(r"^([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|mrk-[0-9a-f]{32})$")
_ALIAS = re.compile(r"^alias/[\w/+=,.@-]{1,250}$")
_SUBNET = re.compile(r"^subnet-[0-9a-f]{8,17}$")
_GROUP = re.compile(r"^sg-[0-9a-f]{8,17}$")

Networks = tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...]  # (region, subnets, security groups), sorted by region


@dataclass(frozen=True)
class CopyTarget:
    """An account that gets its own copy, made there by assuming `role`; `register`: also
    register the task's launch template, compute environment and queue there."""

    account: str
    role: str
    register: bool = False
    networks: Networks = ()  # that account's subnets and security groups per region (default: its default VPC)


@dataclass(frozen=True)
class Distribution:
    regions: tuple[str, ...] = ()
    kms_keys: tuple[tuple[str, str], ...] = ()  # (region, key), sorted by region
    share_with: tuple[str, ...] = ()  # account ids, organization ARNs, OU ARNs
    copy_to: tuple[CopyTarget, ...] = ()
    networks: Networks = ()  # per target region: where its compute environments run (default: its default VPC)
    given: frozenset[str] = field(default=frozenset(), compare=False)  # the fields the file named

    @property
    def empty(self) -> bool:
        return not (self.regions or self.share_with or self.copy_to)

    def key(self, region: str) -> str | None:
        return dict(self.kms_keys).get(region)

    def network(self, region: str, account: str = "") -> tuple[tuple[str, ...], tuple[str, ...]] | None:
        """(subnets, security groups) named for `region` (in copy_to `account`; "": ours), or None: the default VPC."""
        networks = self.networks if not account else next((c.networks for c in self.copy_to if c.account == account), ())
        return next(((subnets, groups) for r, subnets, groups in networks if r == region), None)

    @property
    def accounts(self) -> tuple[str, ...]:
        return tuple(s for s in self.share_with if _ACCOUNT.match(s))

    @property
    def organizations(self) -> tuple[str, ...]:
        return tuple(s for s in self.share_with if _ORG.match(s))

    @property
    def units(self) -> tuple[str, ...]:
        return tuple(s for s in self.share_with if _OU.match(s))

    def targets(self, home: str) -> tuple[str, ...]:
        """The regions a copy goes to: `regions` without the home region, in order."""
        return tuple(r for r in dict.fromkeys(self.regions) if r != home)

    def to_json(self) -> dict[str, Any]:
        return {
            "regions": list(self.regions), "kms_keys": dict(self.kms_keys), "share_with": list(self.share_with),
            "copy_to": [{"account": c.account, "role": c.role, "register": c.register, **({"networks": _networks_json(c.networks)} if c.networks else {})}
                        for c in self.copy_to],
            "networks": _networks_json(self.networks),
        }


def _networks_json(networks: Networks) -> dict[str, Any]:
    return {r: {"subnets": list(subnets), "security_groups": list(groups)} for r, subnets, groups in networks}


def _parse_networks(value: Any, where: str, bad: Callable[[str, str], None]) -> Networks:
    """`{REGION: {subnets: [subnet-...], security_groups: [sg-...]}}`, both or neither per region."""
    example = "{us-west-2: {subnets: [subnet-0abc12345], security_groups: [sg-0def67890]}}"
    if value is None:
        return ()
    if not isinstance(value, dict):
        bad(where, f"expected a mapping of region to {{subnets, security_groups}}, e.g. {example}; got {value!r}")
        return ()
    out = []
    for region, net in value.items():
        here = f"{where}.{region}"
        if not isinstance(region, str) or not _REGION.match(region):
            bad(here, f"{region!r} is not an AWS region name such as us-west-2")
            continue
        if not isinstance(net, dict):
            bad(here, f"expected {{subnets: [subnet-...], security_groups: [sg-...]}}, got {net!r}")
            continue
        for key in net:
            if key not in NETWORK_FIELDS:
                bad(f"{here}.{key}", f"unknown setting; expected {' and '.join(NETWORK_FIELDS)}")
        ids: dict[str, tuple[str, ...]] = {}
        for name, pattern, shape in (("subnets", _SUBNET, "subnet-..."), ("security_groups", _GROUP, "sg-...")):
            items = net.get(name)
            items = [items] if isinstance(items, str) else items
            if items is None:
                items = []
            if not isinstance(items, list):
                bad(f"{here}.{name}", f"expected a list of {shape} ids, got {items!r}")
                items = []
            for i, item in enumerate(items):
                if not isinstance(item, str) or not pattern.match(item):
                    bad(f"{here}.{name}[{i}]", f"{item!r} is not a {shape} id; copy it from `aws ec2 describe-{name.replace('_', '-')} --region {region}`")
            ids[name] = tuple(str(i) for i in items)
        if not ids["subnets"] or not ids["security_groups"]:
            bad(here, f"give both subnets and security_groups for {region} (subnet and security group ids are regional), or leave "
                f"{region} out to use its default VPC")
            continue
        out.append((region, ids["subnets"], ids["security_groups"]))
    return tuple(sorted(out))


def partition(region: str) -> str:
    """The AWS partition a region is in (aws, aws-cn, aws-us-gov)."""
    if region.startswith("cn-"):
        return "aws-cn"
    if region.startswith("us-gov-"):
        return "aws-us-gov"
    return "aws"


def parse(data: Any, bad: Callable[[str, str], None], prefix: str = "distribute") -> Distribution:
    """A `distribute:` mapping as a Distribution; each problem reported as bad(field, message)."""
    if data is None:
        return Distribution()
    if not isinstance(data, dict):
        bad(prefix, f"must be a mapping with keys {', '.join(FIELDS)}")
        return Distribution()
    # Unknown keys are the caller's schema's to report (config._SCHEMA, the spec's JSON schema).
    def str_list(name: str) -> tuple[str, ...]:
        value = data.get(name)
        if value is None:
            return ()
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in value):
            bad(f"{prefix}.{name}", f"expected a list of strings, got {value!r}")
            return ()
        return tuple(str(v) for v in value)

    regions = str_list("regions")
    for i, region in enumerate(regions):
        if not _REGION.match(region):
            bad(f"{prefix}.regions[{i}]", f"{region!r} is not an AWS region name such as us-west-2")

    keys: dict[str, str] = {}
    given_keys = data.get("kms_keys")
    if given_keys is not None and not isinstance(given_keys, dict):
        bad(f"{prefix}.kms_keys", f"expected a mapping of region to KMS key (id, ARN or alias/NAME), got {given_keys!r}")
    for region, key in (given_keys or {}).items() if isinstance(given_keys, dict) else ():
        where = f"{prefix}.kms_keys.{region}"
        if not isinstance(region, str) or not _REGION.match(region):
            bad(where, f"{region!r} is not an AWS region name such as us-west-2")
            continue
        if not isinstance(key, str) or not (_KEY_ARN.match(key) or _KEY_ID.match(key) or _ALIAS.match(key)):
            bad(where, f"{key!r} is not a KMS key id, key ARN, alias ARN or alias/NAME")
            continue
        m = _KEY_ARN.match(key)
        if m and m.group(2) != region:
            bad(where, f"{key} is a key in {m.group(2)}, not {region}: KMS keys are regional; name a key of {region} "
                "(a multi-Region key's replica there has its own ARN)")
        if m and m.group(1) != partition(region):
            bad(where, f"{key} is in partition {m.group(1)}, but {region} is in {partition(region)}")
        keys[region] = key

    share = str_list("share_with")
    for i, who in enumerate(share):
        where = f"{prefix}.share_with[{i}]"
        if who.lower() == "all":
            bad(where, "`all` would make the AMI public, which factory never does; name the accounts (12 digits), "
                "an organization ARN or an OU ARN instead")
        elif who.isdigit() or re.fullmatch(r"[\d-]+", who):
            if not _ACCOUNT.match(who):
                bad(where, f"{who!r} is not an AWS account id: 12 digits, without dashes, quoted so YAML keeps leading zeros (e.g. \"012345678901\")")
        elif who.startswith("arn:") and ":organizations::" in who:
            if ":ou/" in who and not _OU.match(who):
                bad(where, f"{who!r} is not an organizational unit ARN such as arn:aws:organizations::111122223333:ou/o-abc123def4/ou-ab12-cd34ef56")
            elif ":ou/" not in who and not _ORG.match(who):
                bad(where, f"{who!r} is not an organization ARN such as arn:aws:organizations::111122223333:organization/o-abc123def4")
        else:
            bad(where, f"{who!r} is neither an account id (12 digits), an organization ARN nor an OU ARN")

    copies: list[CopyTarget] = []
    given_copies = data.get("copy_to")
    if given_copies is not None and not isinstance(given_copies, list):
        bad(f"{prefix}.copy_to", f"expected a list of {{account, role, register}} mappings, got {given_copies!r}")
        given_copies = []
    for i, item in enumerate(given_copies or []):
        where = f"{prefix}.copy_to[{i}]"
        if not isinstance(item, dict):
            bad(where, f"expected a mapping {{account: \"444455556666\", role: arn:aws:iam::444455556666:role/NAME}}, got {item!r}")
            continue
        for key in item:
            if key not in COPY_TO_FIELDS:
                bad(f"{where}.{key}", f"unknown setting; expected one of {', '.join(COPY_TO_FIELDS)}")
        account, role, register = str(item.get("account", "")), item.get("role"), item.get("register", False)
        if not _ACCOUNT.match(account):
            bad(f"{where}.account", f"{item.get('account')!r} is not an AWS account id: 12 digits, quoted (e.g. \"444455556666\")")
            continue
        m = _ROLE.match(role) if isinstance(role, str) else None
        if not m:
            bad(f"{where}.role", f"{role!r} is not an IAM role ARN such as arn:aws:iam::{account}:role/factory-distribute "
                "(factory assumes it to copy into that account)")
            continue
        if m.group(2) != account:
            bad(f"{where}.role", f"{role} is a role of account {m.group(2)}, not {account}: name a role in the account the copy goes to")
            continue
        if not isinstance(register, bool):
            bad(f"{where}.register", f"expected true or false, got {register!r}")
            register = False
        copies.append(CopyTarget(account, role, register, _parse_networks(item.get("networks"), f"{where}.networks", bad)))
    networks = _parse_networks(data.get("networks"), f"{prefix}.networks", bad)
    return Distribution(tuple(regions), tuple(sorted(keys.items())), share, tuple(copies), networks, frozenset(k for k in data if k in FIELDS))


def overlay(base: Distribution, override: Distribution | None) -> Distribution:
    """factory.yaml's distribution with a spec's: each field the spec names replaces the file's."""
    if override is None:
        return base
    changes = {name: getattr(override, name) for name in FIELDS if name in override.given}
    return replace(base, **changes, given=base.given | override.given)


def check(dist: Distribution, home: str, home_key: str | None, bad: Callable[[str, str], None], prefix: str = "distribute") -> None:
    """What AWS would refuse after the bake, refused now. `home_key`: the key the bake
    encrypts with in `home` (factory.yaml `builder.kms_key`; None: the account's default)."""
    if dist.empty:
        return
    home_partition = partition(home)
    for region in dist.targets(home):
        if partition(region) != home_partition:
            bad(f"{prefix}.regions", f"{region} is in partition {partition(region)} but the image is baked in {home} "
                f"({home_partition}): CopyImage does not cross partitions; bake it there with a spec whose region is {region}")
        elif dist.key(region) is None:
            bad(f"{prefix}.kms_keys", f"no key for {region}: factory's AMIs are encrypted and KMS keys are regional, so the copy "
                f"would fall back to {region}'s AWS-managed aws/ebs key, which cannot be shared; add `{region}: alias/NAME` "
                "naming a customer-managed key there")
    for region, key in dist.kms_keys:
        if key == AWS_MANAGED_EBS_KEY and (dist.share_with or dist.copy_to):
            bad(f"{prefix}.kms_keys.{region}", "alias/aws/ebs is the AWS-managed key: AWS cannot share AMIs encrypted with it "
                "nor copy them to another account; name a customer-managed key")
    for i, who in enumerate(dist.share_with):
        m = _ORG.match(who) or _OU.match(who)
        if m and m.group(1) != home_partition:
            bad(f"{prefix}.share_with[{i}]", f"{who} is in partition {m.group(1)}, but the image is in {home} ({home_partition})")
    for i, c in enumerate(dist.copy_to):
        m = _ROLE.match(c.role)
        if m and m.group(1) != home_partition:
            bad(f"{prefix}.copy_to[{i}].role", f"{c.role} is in partition {m.group(1)}, but the image is in {home} ({home_partition}): "
                "CopyImage does not cross partitions")
    targets = dist.targets(home)
    for region, _, _ in dist.networks:
        if region == home:
            bad(f"{prefix}.networks.{region}", f"{region} is the image's own region, whose network is factory.yaml's batch.subnets and "
                "batch.security_groups; leave it out of distribute.networks")
        elif region not in targets:
            bad(f"{prefix}.networks.{region}", f"the copies do not go to {region} (distribute.regions: {', '.join(targets) or 'none'}); "
                f"add {region} to regions or leave it out of networks")
    for i, c in enumerate(dist.copy_to):
        for region, _, _ in c.networks:
            if region not in (home, *targets):
                bad(f"{prefix}.copy_to[{i}].networks.{region}", f"account {c.account} gets copies in {', '.join((home, *targets))} only; "
                    f"leave {region} out, or add it to distribute.regions")
            elif not c.register:
                bad(f"{prefix}.copy_to[{i}].networks", f"account {c.account} is only copied into (register: false): nothing registers "
                    "there, so a network is not used; set register: true or leave networks out")
                break
    if dist.key(home) is not None and dist.key(home) != home_key:
        bad(f"{prefix}.kms_keys.{home}", f"{dist.key(home)} is not the key the bake in {home} encrypts with "
            f"(factory.yaml builder.kms_key: {home_key or 'null, the account default'}); set builder.kms_key to "
            f"{dist.key(home)}, or leave {home} out of kms_keys")
    if dist.share_with or dist.copy_to:
        key = home_key
        if not key or key == AWS_MANAGED_EBS_KEY:
            bad(f"{prefix}.share_with", f"the AMI is baked in {home} with "
                f"{'the account default EBS key' if not key else 'the AWS-managed key aws/ebs'}, and AWS cannot share AMIs "
                f"encrypted with aws/ebs; set builder.kms_key (factory.yaml) to a customer-managed key")


def settle(base: Distribution, base_file: str, spec: Any, builder_key: str | None) -> Distribution:
    """The spec's distribution (factory.yaml's, with the spec's fields over it), checked
    against its region and the bake's key; a ConfigError naming each problem's file."""
    from factory.config import ConfigError

    own: Distribution | None = getattr(spec, "distribute", None)
    dist = overlay(base, own)
    problems: list[str] = []

    def bad(field_path: str, message: str) -> None:
        name = field_path.split(".")[1].split("[")[0] if "." in field_path else ""
        file = str(spec.path) if own is not None and name in own.given else base_file
        problems.append(f"{file}: {field_path}: {message}")

    check(dist, spec.region, builder_key, bad)
    if problems:
        raise ConfigError("\n".join(problems) + "\nSee docs/register.md, 'Distribution'.")
    return dist
