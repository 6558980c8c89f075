"""`factory rollback TASK [--to AMI]`: run the task's previous AMI again.

The previous AMI is the one before the current value in the history of the task's SSM
parameter `/factory/<task>/ami-id` (factory.register.parameter), or `--to`. It must be
available, of the task's architecture, and the task's own: tagged `factory:task` with the
task or its tier's largest task, or named before by the task's parameter. Then it is a
register with that AMI for the tier's largest task (a tier runs on its largest task's
AMI): a new launch template version, the compute environment updated as any change is,
and the parameter of every task of the tier moved back.

The rollback lasts: the parameter is written with a description that marks a hold
(register.parameter.HOLD_MARK), and a later `factory register` or a bake of an unchanged
image keeps the tier on that AMI, saying so in the plan. It rolls forward when an AMI is
given (`factory register TASK --ami AMI`) or a bake makes a new image (docs/register.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from factory.errors import FactoryError


@dataclass
class Rollback:
    task: str
    tier: str
    ami_task: str
    from_ami: str | None
    to_ami: str
    source: str  # "parameter history (version N)" | "--to"
    result: Any  # factory.register.RegisterResult
    regions: dict[str, Any] | None = None  # distribution: region -> its RegisterResult, or a note why not rolled

    def to_json(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "tier": self.tier,
            "ami_task": self.ami_task,
            "from": self.from_ami,
            "to": self.to_ami,
            "source": self.source,
            "register": self.result.to_json(),
            "regions": {r: (v if isinstance(v, str) else v.to_json()) for r, v in (self.regions or {}).items()},
        }


def rollback(
    spec: Any,
    all_specs: Sequence[Any],
    cloud: Any,
    to: str | None = None,
    *,
    config: Any = None,
    dry_run: bool = False,
    progress: Callable[[str], None] | None = None,
    wait_timeout: float = 900.0,
    poll: float = 5.0,
) -> Rollback:
    from factory.register.apply import register_targets
    from factory.register.parameter import history, hold_description, parameter_name
    from factory.register.targets import targets_for
    from factory.register.tier_choice import tiers_in_account

    if config is None:
        from factory.config import load_config

        config = load_config()
    tiers, _ = tiers_in_account(list(all_specs), config.max_tiers, cloud.clients)
    target = next((t for t in targets_for(list(all_specs), tiers) if spec.name in t.tasks), None)
    if target is None:
        raise FactoryError(f"task {spec.name} is in no tier; run `factory size --all` to see the tiers")
    clients = cloud.clients(target.region)
    versions = history(clients.ssm(), spec.name)
    values = [v["Value"] for v in versions]
    current = values[-1] if values else None
    if to:
        source = "--to"
    else:
        if not versions:
            raise FactoryError(f"task {spec.name} has no AMI history ({parameter_name(spec.name)} does not exist): register it first, or pass --to AMI")
        earlier = [v for v in versions if v["Value"] != current]
        if not earlier:
            raise FactoryError(f"{parameter_name(spec.name)} has named only {current}: there is no previous AMI to roll back to (pass --to AMI)")
        to = earlier[-1]["Value"]
        source = f"{parameter_name(spec.name)} version {earlier[-1]['Version']}"
    _check(clients.ec2(), target, spec.name, to, values)
    result = register_targets(
        [target],
        clients,
        {target.ami_task: to},
        dry_run,
        config=config,
        wait_timeout=wait_timeout,
        poll=poll,
        progress=progress,
        image_target=cloud.image_target(target.region),
        hold=hold_description(target.ami_task, to, current),
    )
    regions = _roll_copies(spec, all_specs, cloud, config, target, to, current, dry_run, progress, wait_timeout, poll)
    return Rollback(spec.name, target.tier, target.ami_task, current, to, source, result, regions)


def _roll_copies(spec: Any, all_specs: Sequence[Any], cloud: Any, config: Any, target: Any, to: str, current: str | None,
                 dry_run: bool, progress: Any, wait_timeout: float, poll: float) -> dict[str, Any]:
    """Every region the task is distributed to goes back too: to its copy of `to` (found by
    `factory:copy-of`), registered there as the home region was. A region without that copy
    is named, with the command that makes it."""
    from dataclasses import replace

    from factory.distribute.copies import find_copy
    from factory.distribute.other_accounts import network_in
    from factory.register.apply import register_targets
    from factory.register.parameter import hold_description
    from factory.register.targets import targets_for
    from factory.tiers import tiers_for

    out: dict[str, Any] = {}
    for region in config.distribution_for(spec).targets(spec.region):
        clients = cloud.clients(region)
        copy = find_copy(clients.ec2(), to)
        if copy is None or copy.get("State") != "available":
            out[region] = (f"no available copy of {to} in {region}: run `factory distribute {target.ami_task} --ami {to} --register` "
                           "to copy it there and run it")
            continue
        moved = [replace(s, region=region) for s in all_specs if region in config.distribution_for(s).targets(s.region)]
        tiers, _ = tiers_for(moved, config.max_tiers)
        there = next((t for t in targets_for(moved, tiers) if spec.name in t.tasks), None)
        if there is None:
            continue
        out[region] = register_targets([there], clients, {there.ami_task: copy["ImageId"]}, dry_run,
                                       config=network_in(config, config.distribution_for(spec), region), wait_timeout=wait_timeout, poll=poll, progress=progress, image_target=cloud.image_target(region),
                                       hold=hold_description(there.ami_task, copy["ImageId"], None))
    out.update(_roll_accounts(spec, cloud, config, to, dry_run, progress, wait_timeout, poll))
    return out


def _roll_accounts(spec: Any, cloud: Any, config: Any, to: str, dry_run: bool, progress: Any, wait_timeout: float,
                   poll: float) -> dict[str, Any]:
    """Every copy_to account the task is registered in (`register: true`) goes back too, in
    every region it has a copy: to its copy of our AMI there that stands for `to` (`to` at
    home, our copy of it elsewhere), through the role copy_to names. `ACCOUNT:REGION` -> its
    RegisterResult, or why not."""
    from factory.distribute.other_accounts import network_in, other_accounts, our_ami_in, regions_of, their_copy, tiers_there
    from factory.register.apply import register_targets
    from factory.register.parameter import hold_description

    out: dict[str, Any] = {}
    for other in other_accounts([spec], config, cloud.clients, registered=True, image_target_for=cloud.image_target):
        for region in regions_of(spec, config):
            ours = our_ami_in(region, spec, to, cloud.clients)
            theirs = their_copy(other, region, ours)
            if theirs is None:
                out[other.label(region)] = (f"no available copy of {ours or to} in account {other.account} in {region}: run "
                                            f"`factory distribute {spec.name} --ami {to} --register` to copy it there and run it")
                continue
            _, there = tiers_there(spec, region, other, config)
            out[other.label(region)] = register_targets(
                [there], other.clients(region), {there.ami_task: theirs}, dry_run,
                config=network_in(config, config.distribution_for(spec), region, other.account), wait_timeout=wait_timeout,
                poll=poll, progress=progress, image_target=other.image_target(region), hold=hold_description(there.ami_task, theirs, None))
    return out


def _check(ec2: Any, target: Any, task: str, ami: str, history_values: list[str]) -> None:
    """Refuse an AMI that is missing, not available, of another architecture, or not the task's."""
    from botocore.exceptions import ClientError

    from factory.aws import aws_errors, error_code
    from factory.register.ami import serves
    from factory.register.names import TAG_TASK, tag_dict

    if not ami.startswith("ami-"):
        raise FactoryError(f"--to {ami!r} is not an AMI id (ami-...)")
    with aws_errors(f"checking AMI {ami}"):
        try:
            images = ec2.describe_images(ImageIds=[ami])["Images"]  # one id, so one answer: no paging (MaxResults) needed
        except ClientError as exc:
            if not error_code(exc).startswith("InvalidAMIID"):
                raise
            images = []
    if not images:
        raise FactoryError(f"cannot roll {task} back to {ami}: it does not exist in {target.region} (deregistered, e.g. by `factory prune`?)")
    image = images[0]
    if image.get("State") != "available":
        raise FactoryError(f"cannot roll {task} back to {ami}: it is {image.get('State')}, not available")
    if image.get("Architecture") and image["Architecture"] != target.architecture:
        raise FactoryError(f"cannot roll {task} back to {ami}: it is {image['Architecture']}, the task is {target.architecture}")
    owner = tag_dict(image.get("Tags")).get(TAG_TASK)
    if not (serves(image, task) or serves(image, target.ami_task)) and ami not in history_values:
        raise FactoryError(
            f"cannot roll {task} back to {ami}: it was baked for {owner or 'no factory task'} ({TAG_TASK}), and {task} never ran it; "
            f"pass an AMI baked for {target.ami_task} (tier {target.tier} runs on the AMI of its largest task)"
        )
