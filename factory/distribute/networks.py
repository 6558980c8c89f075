"""Before any instance starts: every place a copy will be registered has somewhere to run.

A target region (and, for a copy_to account with `register: true`, each of its regions)
registers its compute environments in the subnets and security groups
`distribute.networks` (or the copy_to entry's `networks`) names there, else in that
region's default VPC (factory.distribute.other_accounts.network_in; register's
factory.register.network.resolve_network). A region with neither would fail after the bake
and the copy, so a bake refuses it first: one DescribeVpcs (isDefault) per such region,
through the assumed role for another account. Named subnets are not read here: register
reads nothing of them either (Batch checks them at CreateComputeEnvironment)."""

from __future__ import annotations

from typing import Any, Callable

from factory.aws import aws_errors
from factory.errors import FactoryError


def has_default_vpc(clients: Any, region: str, account: str = "") -> bool:
    whose = f" of account {account}" if account else ""
    with aws_errors(f"looking up the default VPC{whose} in {region}"):
        return bool(clients.ec2().describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"])  # a region has one default VPC at most


def check_networks(clients_for: Callable[[str], Any], spec: Any, dist: Any, where: str) -> None:
    """Refuse (a FactoryError naming the file, the field and the fix, every region at once)
    a region the copies will be registered in that has no named network and no default VPC."""
    if dist.empty:
        return
    problems: list[str] = []
    for region in dist.targets(spec.region):
        if dist.network(region) is None and not has_default_vpc(clients_for(region), region):
            problems.append(f"{where}: distribute.networks: {region} has no default VPC and distribute.networks names no network "
                            f"there, so the copy could not be registered: add `networks: {{{region}: {{subnets: [subnet-...], "
                            "security_groups: [sg-...]}}` (ids of that region)")
    from factory.distribute.accounts import assumed

    for i, target in enumerate(dist.copy_to):
        if not target.register:
            continue
        theirs = assumed(clients_for(spec.region), target.role, target.account)
        for region in (spec.region, *dist.targets(spec.region)):
            if dist.network(region, target.account) is None and not has_default_vpc(theirs(region), region, target.account):
                problems.append(f"{where}: distribute.copy_to[{i}].networks: account {target.account} has no default VPC in {region} "
                                f"and copy_to[{i}] names no network there: add `networks: {{{region}: {{subnets: [subnet-...], "
                                "security_groups: [sg-...]}}` to that entry (ids of that account), or set register: false")
    if problems:
        raise FactoryError("\n".join(problems))
