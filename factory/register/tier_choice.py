"""The tiers of an account: one choice that register, plan, nextflow-config, prune, status,
show and rollback all make alike.

Two things about the account shape the tiers besides the specs and `tiers.max_tiers`:

- **Room.** AWS Batch allows 50 compute environments and 50 job queues per region, a quota
  that cannot be raised (register.capacity). When the tiers the specs want do not fit beside
  what the account already has, `register` chooses fewer on its own (the fewest GiB within
  the room, factory.tiers.choose_tiers) and **records** how many tiers it chose in the
  region's SSM parameter `/factory/tiers/room`. Every other command reads that record, not
  the account's free room: the free room moves under them (another team's environments; a
  prune that deletes what a retired tier held), and a command that chose from it could send
  tasks to queues that do not exist, or let prune retire what register just made. The room
  changes only when register records it again.
- **Names.** A tier keeps the name of the queue factory already has for one of its tasks
  (factory.tiers.keep_names; the account's `factory:tier` queue tags), so a larger spec
  joining a group does not rename its tier's queue.

Both are read in one go per region (the queues: one paged DescribeJobQueues; the record: a
GetParameters) from the same RegionReads register uses.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from factory.register import capacity
from factory.register.names import TAG_MANAGED, TAG_TIER
from factory.register.region_reads import RegionReads
from factory.tiers import REGION_TIERS, Tier, choose_tiers, keep_names, tier_group

ROOM_PARAMETER = "/factory/tiers/room"  # per region: how many tiers register chose to fit the account


@dataclass(frozen=True)
class AccountTiers:
    """What one region of the account says about factory's tiers."""

    region: str
    room: int | None  # recorded by register; None: never recorded (REGION_TIERS)
    names: frozenset[str]  # tiers factory has a queue for there (managed, not being deleted)


def read(reads: RegionReads, region: str) -> AccountTiers:
    value = reads.parameters([ROOM_PARAMETER]).get(ROOM_PARAMETER)
    room = int(value) if value and value.isdigit() else None
    names = frozenset(
        (q.get("tags") or {}).get(TAG_TIER, "") for q in reads.queues().values() if (q.get("tags") or {}).get(TAG_MANAGED) == "true"
    ) - {""}
    return AccountTiers(region, room, names)


def _regions(pairs: Sequence[tuple[Any, Any]], default_region: str) -> list[str]:
    return sorted({s.region or default_region for s, _ in pairs})


def choose(pairs: Sequence[tuple[Any, Any]], max_tiers: int | None, accounts: Mapping[str, AccountTiers], default_region: str = "") -> list[Tier]:
    """The tiers every command but register uses: within the room register recorded, with
    the names the account's queues have."""
    groups: dict[str, set[tuple]] = {}
    for spec, _ in pairs:
        groups.setdefault(spec.region or default_region, set()).add(tier_group(spec))
    # A record below the region's tier groups (specs of a new group came after the last
    # register) gives each group at least one tier rather than refusing: the next
    # register records the room again.
    room = {r: max(a.room, len(groups.get(r, ()))) for r, a in accounts.items() if a.room is not None}
    return keep_names(choose_tiers(pairs, max_tiers, room=room), {r: a.names for r, a in accounts.items()}, default_region)


def tiers_in_account(
    specs: Sequence[Any], max_tiers: int | None, clients_for: Callable[[str], Any], default_region: str = "",
    reads: dict[str, RegionReads] | None = None,
) -> tuple[list[Tier], list[tuple[Any, Any]]]:
    """(tiers, [(spec, plan), ...]) as register last chose them: reads each region of the
    specs once (clients_for(region) gives its factory.aws.Clients). `reads`: region ->
    RegionReads to read through (and add to), so a caller reads each region once in all."""
    from factory.sizing import size_specs

    pairs = size_specs(specs)
    reads = {} if reads is None else reads
    for r in _regions(pairs, default_region):
        reads.setdefault(r, RegionReads(clients_for(r)))
    accounts = {r: read(reads[r], r) for r in _regions(pairs, default_region)}
    return choose(pairs, max_tiers, accounts, default_region), pairs


@dataclass
class RegisterChoice:
    """What register chose: the tiers, and per region the room to record (None: leave it)."""

    tiers: list[Tier]
    record: dict[str, int]  # region -> value for ROOM_PARAMETER, where it must change
    notes: list[str]


def for_register(specs: Sequence[Any], max_tiers: int | None, reads: Mapping[str, RegionReads], default_region: str = "") -> RegisterChoice:
    """The most tiers (fewest GiB) each region's free room holds, with stable names.

    Starting from what the region could hold if every tier factory has there were these
    tiers', the room goes down one tier at a time until the chosen tiers fit beside
    everything else: what the account has that is not theirs, including factory's tiers a
    new choice no longer names (prune retires them; until then they take room). The first
    room that fits is the most tiers the account holds now.
    """
    from factory.sizing import size_specs

    pairs = size_specs(specs)
    regions = _regions(pairs, default_region)
    accounts = {r: read(reads[r], r) for r in regions}
    names = {r: a.names for r, a in accounts.items()}

    def in_region(tiers: list[Tier], region: str) -> list[Tier]:
        return [t for t in tiers if (t.group_dict.get("region") or default_region) == region]

    wanted = keep_names(choose_tiers(pairs, max_tiers), names, default_region)
    # Upper bound: every managed tier counts as these tiers'.
    room = {r: min(REGION_TIERS, capacity.of(reads[r], r, _managed_tiers(reads[r])).tiers) for r in regions}
    while True:
        if any(v < 1 for v in room.values()):
            r = next(r for r, v in room.items() if v < 1)
            cap = capacity.of(reads[r], r, {t.name for t in in_region(wanted, r)})
            capacity.check(cap, len(in_region(wanted, r)))  # raises: not even one tier fits
        tiers = keep_names(choose_tiers(pairs, max_tiers, room=room), names, default_region)
        short = {}
        for r in regions:
            mine = in_region(tiers, r)
            cap = capacity.of(reads[r], r, {t.name for t in mine})
            if len(mine) > cap.tiers:
                short[r] = min(room[r], len(mine)) - 1
        if not short:
            break
        room.update(short)
    record: dict[str, int] = {}
    notes: list[str] = []
    for r in regions:
        mine, want = in_region(tiers, r), in_region(wanted, r)
        cap = capacity.of(reads[r], r, {t.name for t in mine})
        value = len(mine) if len(mine) < len(want) else REGION_TIERS
        if value != (accounts[r].room if accounts[r].room is not None else REGION_TIERS):
            record[r] = value
        notes.append(cap.text(len(mine)))
        if len(mine) < len(want):
            notes.append(
                f"{r}: the specs make {len(want)} tiers, more than the account holds beside what it has: register chose {len(mine)} "
                f"(the fewest GiB within them) and records {len(mine)} in SSM {ROOM_PARAMETER}, which nextflow-config, prune, status, "
                "show and rollback read; more once the account has room (e.g. after `factory prune --apply`) and register runs again"
            )
    return RegisterChoice(tiers, record, notes)


def _managed_tiers(reads: RegionReads) -> set[str]:
    tags = [c.get("tags") or {} for c in reads.compute_environments()] + [q.get("tags") or {} for q in reads.queues().values()]
    return {t.get(TAG_TIER, "") for t in tags if t.get(TAG_MANAGED) == "true"} - {""}


def write_record(ssm: Any, value: int, region: str) -> None:
    """Put the room register chose (one PutParameter; the others read it)."""
    from factory.aws import aws_errors

    description = (
        f"factory register: factory's tiers in {region} are chosen within {value} (AWS Batch's fixed quotas, less what the account "
        "has); nextflow-config, prune, status read it"
    )
    with aws_errors(f"recording the tier room in SSM parameter {ROOM_PARAMETER}"):
        ssm.put_parameter(Name=ROOM_PARAMETER, Value=str(value), Type="String", Overwrite=True, Description=description[:1024])

