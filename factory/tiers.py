"""Storage tiers: tasks whose volumes are close share one launch template, compute
environment and queue (`factory-<tier>`).

A volume may be larger than a task needs, never smaller, so a tier's volume is the
largest of its tasks' and the tier's AMI is the one baked for that largest task.

Tasks may share a tier only inside a *tier group*: same region, image base, architecture,
accelerator, volume mode, AWS CLI prefix and Batch settings (they share one compute environment).
Inside a group, the cost of a set of tiers is the GiB provisioned for its tasks: each
task is charged its tier's volume. With the sizes sorted, an optimal set of k tiers is a
partition of the sorted list into k contiguous runs (moving a task to a tier with a
smaller maximum never costs more), so dynamic programming over the sorted sizes finds it
exactly, in O(k n^2). A cap on the number of tiers across all groups is shared between
the groups by a second, knapsack-style DP over each group's cost curve.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Collection, Iterable, Mapping, Sequence

from factory.errors import UsageError

GROUP_FIELDS = (
    "region",
    "image.base",
    "image.architecture",
    # A GPU task and a CPU task never share a tier: their images (GPU base or not), instance
    # types and Batch image types differ.
    "image.accelerator",
    "image.volume",
    "awscli.prefix",
    "batch.instance_types",
    "batch.min_vcpus",
    "batch.max_vcpus",
    "batch.provisioning",
    "batch.allocation_strategy",
    "batch.spot_bid_percentage",
    # storage.grow changes the launch template (a data volume) and the image (the agent,
    # its max_gib): only tasks that grow alike share a tier; None for a task without it.
    "storage.grow.max_gib",
    "storage.grow.volume_type",
    # storage.instance_store changes the image (the boot unit) and what the volume holds
    # (the OS alone): a task on the NVMe store never shares a tier with one on EBS.
    "storage.instance_store",
)


@dataclass(frozen=True)
class Tier:
    """One storage tier. `group` holds (field, value) pairs of GROUP_FIELDS."""

    name: str
    volume_gib: int
    tasks: tuple[str, ...]
    group: tuple
    largest_task: str  # the task whose AMI and plan the tier uses (and whose name it bears, unless keep_names kept an older one)

    @property
    def group_dict(self) -> dict[str, Any]:
        return dict(self.group)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "volume_gib": self.volume_gib,
            "tasks": list(self.tasks),
            "largest_task": self.largest_task,
            "group": {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.group},
        }


def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = None if obj is None else getattr(obj, part, None)  # an optional section or field that is absent
    return tuple(obj) if isinstance(obj, list) else obj


def tier_group(spec: Any) -> tuple:
    """The tier group of a TaskSpec: (field, value) pairs that must match to share a tier."""
    return tuple((f, _get(spec, f)) for f in GROUP_FIELDS)


# ---------------------------------------------------------------------------------------
# The optimisation, on plain numbers


def partition_cost(sizes: Sequence[int], bounds: Sequence[tuple[int, int]]) -> int:
    """GiB provisioned when sorted `sizes` are split into runs [i, j) given by `bounds`."""
    return sum(sizes[j - 1] * (j - i) for i, j in bounds)


def optimal_partition(sizes: Sequence[int], k: int) -> tuple[int, list[tuple[int, int]]]:
    """Split ascending `sizes` into at most k contiguous runs minimising sum(max(run)*len(run)).

    Returns (cost, runs as [start, end) index pairs). Among equal costs, the fewest runs.
    """
    n = len(sizes)
    if n == 0:
        return 0, []
    k = max(1, min(k, n))
    best, choice = _tables(sizes, k)
    return int(best[k][n][0]), _runs(choice, k, n)


def _tables(sizes: Sequence[int], k: int) -> tuple[list[list[tuple[float, int]]], list[list[int]]]:
    """The dynamic programme of optimal_partition for every number of runs up to k at once:
    best[t][j] = (cost, runs used) for the first j sizes in at most t runs, and the choice
    that got there. Row t does not depend on k, so one table answers every t <= k."""
    n = len(sizes)
    if any(sizes[i] > sizes[i + 1] for i in range(n - 1)):
        raise ValueError("sizes must be sorted ascending")
    inf = float("inf")
    best: list[list[tuple[float, int]]] = [[(inf, 0)] * (n + 1) for _ in range(k + 1)]
    choice = [[0] * (n + 1) for _ in range(k + 1)]
    for t in range(k + 1):
        best[t][0] = (0, 0)
    for t in range(1, k + 1):
        for j in range(1, n + 1):
            cand = best[t - 1][j]  # use fewer runs
            arg = -1
            for i in range(j):
                prev = best[t - 1][i]
                if prev[0] == inf:
                    continue
                c = (prev[0] + sizes[j - 1] * (j - i), prev[1] + 1)
                if c < cand:
                    cand, arg = c, i
            best[t][j] = cand
            choice[t][j] = arg
    return best, choice


def _runs(choice: list[list[int]], t: int, n: int) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    j = n
    while j > 0:
        i = choice[t][j]
        if i == -1:
            t -= 1
            continue
        runs.append((i, j))
        j, t = i, t - 1
    runs.reverse()
    return runs


def _group_curve(sizes: Sequence[int]) -> list[tuple[int, list[tuple[int, int]]]]:
    """cost and runs for each number of tiers 1..distinct sizes (index 0 = 1 tier), from one
    table (_tables): O(n^3) for n sizes, where a table per number of tiers was O(n^4)."""
    distinct = len(set(sizes))
    n = len(sizes)
    if n == 0:
        return []
    best, choice = _tables(sizes, distinct)
    return [(int(best[t][n][0]), _runs(choice, t, n)) for t in range(1, distinct + 1)]


def _share_cap(curves: list[list[tuple[int, Any]]], cap: int) -> list[int]:
    """How many tiers each group gets (>= 1 each, sum <= cap) to minimise the total cost."""
    inf = float("inf")
    # dp[t] = (cost, tiers, allocation) over the groups seen so far using exactly t tiers.
    dp: dict[int, tuple[float, list[int]]] = {0: (0, [])}
    for curve in curves:
        nxt: dict[int, tuple[float, list[int]]] = {}
        for used, (cost, alloc) in dp.items():
            for k, (c, _) in enumerate(curve, start=1):
                t = used + k
                if t > cap:
                    break
                cand = (cost + c, alloc + [k])
                if t not in nxt or cand[0] < nxt[t][0]:
                    nxt[t] = cand
        dp = nxt
    best_t = min(dp, key=lambda t: (dp[t][0], t), default=None)
    if best_t is None or dp[best_t][0] == inf:  # pragma: no cover - cap checked by caller
        raise ValueError("no allocation")
    return dp[best_t][1]


# ---------------------------------------------------------------------------------------
# The entry point


CAP_SOURCES = "set by --max-tiers, else by tiers.max_tiers in factory.yaml"

# AWS Batch allows 50 compute environments and 50 job queues per region, and these quotas
# cannot be raised (Batch User Guide, "AWS Batch service quotas"). A tier is one of each, and
# a blue/green replacement (register.compute_environment) needs a second environment while
# the queue moves: so a region holds at most 49 tiers, fewer when the account has other
# environments or queues there (register.capacity counts them).
BATCH_ENVIRONMENTS_PER_REGION = 50
BATCH_QUEUES_PER_REGION = 50
REPLACEMENT_ROOM = 1
REGION_TIERS = min(BATCH_ENVIRONMENTS_PER_REGION - REPLACEMENT_ROOM, BATCH_QUEUES_PER_REGION)


def choose_tiers(specs_and_plans: Iterable[tuple[Any, Any]], max_tiers: int | None = None, room: Mapping[str, int] | None = None) -> list[Tier]:
    """Optimal storage tiers for (TaskSpec, SizingPlan) pairs.

    max_tiers=None: no cap of the user's, so every distinct volume in a group is its own
    tier (nothing is over-provisioned), as far as AWS Batch's quotas allow. With a cap N, at
    most N tiers in all, each group at least one; the total provisioned GiB (sum over tasks
    of their tier's volume) is minimal. `room` is how many tiers each region can hold
    (register.capacity counts the account's; default REGION_TIERS, what an empty account
    holds): no region gets more.
    """
    pairs = list(specs_and_plans)
    if not pairs:
        return []
    names = [s.name for s, _ in pairs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UsageError(f"task {dupes[0]} is given twice; pass each spec once")
    groups: dict[tuple, list[tuple[int, str]]] = {}
    for spec, plan in pairs:
        groups.setdefault(tier_group(spec), []).append((int(plan.volume_gib), spec.name))
    keys = sorted(groups, key=repr)
    if max_tiers is not None:
        if max_tiers < 1:
            raise UsageError(f"the tier cap must be at least 1 (got {max_tiers}; {CAP_SOURCES})")
        if max_tiers < len(keys):
            raise UsageError(
                f"a cap of {max_tiers} tier{'s' if max_tiers != 1 else ''} ({CAP_SOURCES}) is fewer than the {len(keys)} tier groups: tasks that "
                "differ in region, image base, architecture, accelerator, volume mode, awscli prefix or batch "
                f"settings cannot share a tier. Fix: allow {len(keys)} tiers or more, or make "
                "those settings match"
            )
    members = {k: sorted(groups[k]) for k in keys}
    curves = [_group_curve([v for v, _ in members[k]]) for k in keys]
    alloc = _allocate(keys, curves, max_tiers, room or {})

    raw: list[tuple[int, tuple, tuple[str, ...], str]] = []
    for key, curve, k in zip(keys, curves, alloc):
        items = members[key]
        _, runs = curve[k - 1]
        for i, j in runs:
            run = items[i:j]
            volume, largest = run[-1]
            raw.append((volume, key, tuple(sorted(n for _, n in run)), largest))
    raw.sort(key=lambda r: (r[0], repr(r[1])))
    # A tier is named after its largest task: task names are unique, the name survives a
    # resize (a new size is a new launch template version, not a new queue), and it keeps
    # "one name everywhere": a task alone in its tier has queue factory-<task>. keep_names
    # then keeps the names the account already has, so a new largest task renames nothing.
    return [Tier(name=largest, volume_gib=vol, tasks=tasks, group=key, largest_task=largest) for vol, key, tasks, largest in raw]


def _allocate(keys: Sequence[tuple], curves: list[list[tuple[int, Any]]], max_tiers: int | None, room: Mapping[str, int]) -> list[int]:
    """Tiers per group: within each region's room, and within max_tiers in all."""
    regions = sorted({dict(k).get("region") or "" for k in keys})
    in_region = {r: [i for i, k in enumerate(keys) if (dict(k).get("region") or "") == r] for r in regions}
    space = {r: int(room.get(r, REGION_TIERS)) for r in regions}
    for r in regions:
        if len(in_region[r]) > space[r]:
            raise UsageError(
                f"region {r} has room for {space[r]} tier{'s' if space[r] != 1 else ''} (AWS Batch: {BATCH_ENVIRONMENTS_PER_REGION} compute environments "
                f"and {BATCH_QUEUES_PER_REGION} job queues per region, a fixed quota; one environment kept for a blue/green replacement; "
                f"less what the account already has there), fewer than its {len(in_region[r])} tier groups. Fix: delete compute environments "
                "or job queues the account no longer needs there, or make the specs' settings match so tasks can share tiers"
            )

    def per_region(caps: Mapping[str, int]) -> list[int]:
        out = [0] * len(keys)
        for r in regions:
            idx = in_region[r]
            if sum(len(curves[i]) for i in idx) <= caps[r]:  # every distinct size its own tier fits
                share = [len(curves[i]) for i in idx]
            else:
                share = _share_cap([curves[i] for i in idx], caps[r])
            for i, k in zip(idx, share):
                out[i] = k
        return out

    caps = {r: space[r] if max_tiers is None else min(space[r], max_tiers) for r in regions}
    if max_tiers is None or sum(caps.values()) <= max_tiers:
        return per_region(caps)  # each region's best within its room: together within the cap too
    overall = _share_cap(curves, max_tiers)
    used = {r: sum(overall[i] for i in in_region[r]) for r in regions}
    if all(used[r] <= space[r] for r in regions):
        return overall
    # Both bind (several regions, a cap and a full account): each region within its room and
    # its share of the cap. Within both limits; not always the least GiB.
    return per_region({r: min(used[r], space[r]) for r in regions})


def keep_names(tiers: Sequence[Tier], existing: Mapping[str, Collection[str]], default_region: str = "") -> list[Tier]:
    """Stable names: a tier whose tasks include the name of a tier factory already has in
    its region (`existing`: region -> names, e.g. the account's `factory:tier` queue tags)
    keeps that name, so a larger spec joining its group does not rename it (nor its queue,
    which Nextflow configs hold). Among several such names (tiers merged), the first in
    alphabetical order; a tier with none is named after its largest task. Task names are
    unique, so the names stay unique."""
    out = []
    for tier in tiers:
        region = tier.group_dict.get("region") or default_region
        kept = sorted(set(tier.tasks) & set(existing.get(region, ())))
        name = tier.largest_task if tier.largest_task in kept or not kept else kept[0]
        out.append(tier if name == tier.name else replace(tier, name=name))
    return out


def provisioned_gib(tiers: Sequence[Tier]) -> int:
    """Sum over tasks of their tier's volume: what the tiers provision, one instance per task."""
    return sum(t.volume_gib * len(t.tasks) for t in tiers)


def tier_of(task: str, tiers: Sequence[Tier]) -> Tier:
    for t in tiers:
        if task in t.tasks:
            return t
    raise KeyError(task)


def tiers_for(
    specs: Sequence[Any], max_tiers: int | None = None, room: Mapping[str, int] | None = None, **size_options: Any
) -> tuple[list[Tier], list[tuple[Any, Any]]]:
    """Size every spec and choose the tiers over them: (tiers, [(spec, plan), ...]).

    The one way the CLI and the register step get tiers, so `size --all`, `size TASK`,
    `register` and `nextflow-config` always agree. `size_options` go to size_task
    (e.g. price_per_gib_month).
    """
    from factory.sizing import size_specs

    pairs = size_specs(specs, **size_options)
    return choose_tiers(pairs, max_tiers=max_tiers, room=room), pairs
