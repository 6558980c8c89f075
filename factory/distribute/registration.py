"""Register the copies: in every region a task was copied to, the tier's launch template,
compute environment, queue and SSM parameter, as its own region is registered
(factory.register.register_tasks, given the copy as the task's AMI).

Each task is registered there as itself with its region changed, so tiers in a target
region are chosen over the tasks distributed there. factory.yaml's `batch.subnets` and
`security_groups` belong to the spec's own region: a target region uses the network
`distribute.networks` names for it (a copy_to account's: its entry's `networks`), else its
default VPC (factory.distribute.other_accounts.network_in)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, Callable


def register_copies(
    specs: Sequence[Any],
    copies: Mapping[str, Mapping[str, str]],
    clients_for: Callable[[str], Any],
    config: Any,
    *,
    image_target_for: Callable[[str], Any] | None = None,
    progress: Callable[[str], None] | None = None,
    poll: float = 5.0,
    include_home: bool = False,
    account: str = "",
) -> dict[str, Any]:
    """copies: task -> {region: AMI there} (the spec's own region left out, unless
    `include_home`: another account's copies, registered in every region; `account`: that
    account, whose copy_to entry names its networks). Returns region -> RegisterResult."""
    from factory.distribute.other_accounts import network_in
    from factory.register import register_tasks

    by_region: dict[str, dict[str, str]] = {}
    for spec in specs:
        for region, ami in copies.get(spec.name, {}).items():
            if region != spec.region or include_home:
                by_region.setdefault(region, {})[spec.name] = ami
    results: dict[str, Any] = {}
    pool = {s.name: s for s in specs}
    for region, amis in sorted(by_region.items()):
        moved = [replace(pool[name], region=region) for name in amis]
        first = pool[next(iter(amis))]  # the tasks of one region share factory.yaml's networks (a spec may name its own)
        here = network_in(config, config.distribution_for(first), region, account)
        if progress:
            progress(f"registering in {region}")
        result = register_tasks(moved, clients_for(region), dict(amis), False, config=here, all_specs=moved, poll=poll,
                                progress=progress, image_target=image_target_for(region) if image_target_for else None)
        if config.batch.subnets and not here.batch.subnets:
            result.notes.append(f"{region}: factory.yaml's batch.subnets and security_groups are the spec's own region's; "
                                "the default VPC was used here (distribute.networks names a region's own)")
        results[region] = result
    return results


def plan_copies(specs: Sequence[Any], all_specs: Sequence[Any], clients_for: Callable[[str], Any], config: Any, home: Any,
                image_target_for: Callable[[str], Any] | None = None) -> dict[str, Any]:
    """`factory plan` in every region the tasks are distributed to: region -> the
    RegisterResult of a dry run with each task's copy of the AMI home plans with, or a
    sentence saying which copies a distribution would make first."""
    from factory.distribute.copies import find_copy
    from factory.distribute.other_accounts import network_in
    from factory.register import register_tasks

    wanted: dict[str, dict[str, str]] = {}  # region -> task -> the home AMI it would run
    for spec in specs:
        try:
            ami = home.for_task(spec.name).ami_id
        except (KeyError, StopIteration, ValueError):
            continue
        for region in config.distribution_for(spec).targets(spec.region):
            if ami:
                wanted.setdefault(region, {})[spec.name] = ami
    out: dict[str, Any] = {}
    for region, amis in sorted(wanted.items()):
        ec2 = clients_for(region).ec2()
        copies: dict[str, str] = {}
        missing: list[str] = []
        for task, ami in amis.items():
            copy = find_copy(ec2, ami)
            if copy is not None and copy.get("State") == "available":
                copies[task] = copy["ImageId"]
            else:
                missing.append(f"{task} ({ami})")
        if missing:
            out[region] = (f"would copy {', '.join(missing)} to {region} first (`factory bake` or `factory distribute TASK --register`), "
                           "then register there")
            continue
        moved = [replace(s, region=region) for s in all_specs if region in config.distribution_for(s).targets(s.region)]
        here = network_in(config, config.distribution_for(next(s for s in all_specs if s.name in copies)), region)
        out[region] = register_tasks([s for s in moved if s.name in copies], clients_for(region), copies, True, config=here,
                                     all_specs=moved, image_target=image_target_for(region) if image_target_for else None)
    return out


def plan_accounts(specs: Sequence[Any], clients_for: Callable[[str], Any], config: Any, home: Any,
                  image_target_for: Callable[[str], Any] | None = None) -> dict[str, Any]:
    """`factory plan` in the copy_to accounts with `register: true`, in every region the task
    has an AMI of ours: `ACCOUNT:REGION` -> a dry run there with that account's copy of the
    AMI we plan with in that region, or a sentence saying which copy is missing."""
    from factory.distribute.other_accounts import network_in, other_accounts, our_ami_in, regions_of, their_copy, tiers_there
    from factory.register import register_tasks

    out: dict[str, Any] = {}
    for other in other_accounts(specs, config, clients_for, registered=True, image_target_for=image_target_for):
        for spec in other.specs:
            try:
                home_ami = home.for_task(spec.name).ami_id
            except (KeyError, StopIteration, ValueError):
                continue
            for region in regions_of(spec, config):
                ours = our_ami_in(region, spec, home_ami, clients_for)
                theirs = their_copy(other, region, ours)
                if theirs is None:
                    out[other.label(region)] = (f"would copy {spec.name} ({ours or home_ami}) into account {other.account} in {region} first "
                                                f"(`factory bake` or `factory distribute {spec.name} --register`), then register there")
                    continue
                moved, _ = tiers_there(spec, region, other, config)
                out[other.label(region)] = register_tasks([moved], other.clients(region), {spec.name: theirs}, True,
                                                          config=network_in(config, config.distribution_for(spec), region, other.account),
                                                          all_specs=[moved], image_target=other.image_target(region))
    return out
