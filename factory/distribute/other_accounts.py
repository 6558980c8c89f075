"""The `copy_to` accounts as `plan`, `status`, `prune` and `rollback` see them: each reached
through the role it names (factory.distribute.accounts.assumed, once per account and run),
in every region the task has an AMI in the home account (its own and its target regions),
since that account copies each of them (factory.distribute.run._copy_to_accounts).

A task is registered there one spec at a time (register_in_accounts: tiers chosen over the
task alone, in the network its copy_to entry names, else that account's default VPC), so the tier of a task there is chosen over the
task alone too (`tiers_there`), from the account's own queues and room
(factory.register.tier_choice.tiers_in_account), as register chose it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Callable


@dataclass
class OtherAccount:
    """A Cloud-like view of a copy_to account: `clients(region)` through the assumed role;
    the image target (the Packer the image hash is taken with) is the home cloud's."""

    account: str
    role: str
    register: bool
    clients: Callable[[str], Any]
    image_target_for: Callable[[str], Any] | None = None
    specs: list[Any] = field(default_factory=list)  # the tasks copied there

    def image_target(self, region: str) -> Any:
        return self.image_target_for(region) if self.image_target_for else None

    def label(self, region: str) -> str:
        """How results name a region of this account: `ACCOUNT:REGION` (as `factory distribute` does)."""
        return f"{self.account}:{region}"


def regions_of(spec: Any, config: Any) -> list[str]:
    """Where the task has an AMI of the home account: its own region, then its target regions."""
    return [spec.region, *config.distribution_for(spec).targets(spec.region)]


def other_accounts(specs: Sequence[Any], config: Any, clients_for: Callable[[str], Any], *, registered: bool = False,
                   image_target_for: Callable[[str], Any] | None = None) -> list[OtherAccount]:
    """The copy_to accounts of `specs` (with `register: true` only, when `registered`),
    each with the specs copied there; each role assumed once with the home account's
    `clients_for(region)`."""
    from factory.distribute.accounts import assumed

    out: dict[str, OtherAccount] = {}
    for spec in specs:
        for target in config.distribution_for(spec).copy_to:
            if registered and not target.register:
                continue
            if target.account not in out:
                theirs = assumed(clients_for(spec.region), target.role, target.account)
                out[target.account] = OtherAccount(target.account, target.role, target.register, theirs, image_target_for)
            out[target.account].specs.append(spec)
    return [out[a] for a in sorted(out)]


def network_in(config: Any, dist: Any, region: str, account: str = "") -> Any:
    """factory.yaml's settings as register needs them in a target `region` (of copy_to
    `account`; "": ours): `batch.subnets`/`security_groups` are the home region's, so they
    become the network `distribute.networks` (or the copy_to entry's `networks`) names
    there, or none, and register takes that region's default VPC."""
    named = dist.network(region, account)
    subnets, groups = named if named else ((), ())
    if (config.batch.subnets, config.batch.security_groups) == (subnets, groups):
        return config
    return replace(config, batch=replace(config.batch, subnets=subnets, security_groups=groups))


def tiers_there(spec: Any, region: str, other: OtherAccount, config: Any) -> tuple[Any, Any]:
    """(the task moved to `region`, its register target there) as register_in_accounts chose it."""
    from factory.register.targets import targets_for
    from factory.register.tier_choice import tiers_in_account

    moved = replace(spec, region=region)
    tiers, _ = tiers_in_account([moved], config.max_tiers, other.clients)
    target = next(t for t in targets_for([moved], tiers) if spec.name in t.tasks)
    return moved, target


def our_ami_in(region: str, spec: Any, home_ami: str | None, clients_for: Callable[[str], Any]) -> str | None:
    """The home account's AMI in `region` that stands for `home_ami` (the AMI in the spec's
    own region): itself at home, its available copy (factory:copy-of) elsewhere."""
    from factory.distribute.copies import find_copy

    if not home_ami or region == spec.region:
        return home_ami
    copy = find_copy(clients_for(region).ec2(), home_ami)
    return copy["ImageId"] if copy is not None and copy.get("State") == "available" else None


def their_copy(other: OtherAccount, region: str, ours: str | None) -> str | None:
    """That account's available copy, in `region`, of our AMI `ours` there."""
    from factory.distribute.copies import find_copy

    if not ours:
        return None
    copy = find_copy(other.clients(region).ec2(), ours)
    return copy["ImageId"] if copy is not None and copy.get("State") == "available" else None


def copied_into(others: Sequence[OtherAccount], config: Any, region: str) -> list[Any]:
    """The clients, in `region`, of each account that copies our AMIs there (for prune's
    `copy_regions`: a copy still pending in it keeps its source)."""
    return [o.clients(region) for o in others if any(region in regions_of(s, config) for s in o.specs)]


def prune_accounts(others: Sequence[OtherAccount], config: Any, keep: int, *, dry_run: bool, builder_hours: float,
                   force: bool) -> list[tuple[str, Any]]:
    """`factory prune` in each copy_to account, in every region it has copies: the home
    account's rules (factory.register.prune). Tiers are retired only where register made
    them (`register: true`), and never those it makes there now. [(ACCOUNT:REGION, PruneResult)]."""
    from factory.register import prune

    out: list[tuple[str, Any]] = []
    for other in others:
        regions = sorted({r for s in other.specs for r in regions_of(s, config)})
        in_use = {tiers_there(s, r, other, config)[1].tier for s in other.specs for r in regions_of(s, config)} if other.register else None
        out += [(other.label(region), prune(other.clients(region), keep, dry_run=dry_run, tiers_in_use=in_use,
                                            tasks_in_use={s.name for s in other.specs}, builder_hours=builder_hours, force=force))
                for region in regions]
    return out
