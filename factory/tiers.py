"""Storage tiers: tasks whose volumes are close share one launch template, compute
environment and queue (`factory-<tier>`).

A volume may be larger than a task needs, never smaller, so a tier's volume is the
largest of its tasks' and the tier's AMI is the one baked for that largest task.

Tasks may share a tier only inside a *tier group*: same region, image base, architecture,
volume mode, AWS CLI prefix and Batch settings (they share one compute environment).
Inside a group, the cost of a set of tiers is the GiB provisioned for its tasks: each
task is charged its tier's volume. With the sizes sorted, an optimal set of k tiers is a
partition of the sorted list into k contiguous runs (moving a task to a tier with a
smaller maximum never costs more), so dynamic programming over the sorted sizes finds it
exactly, in O(k n^2). A cap on the number of tiers across all groups is shared between
the groups by a second, knapsack-style DP over each group's cost curve.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from factory.errors import UsageError

GROUP_FIELDS = (
    "region",
    "image.base",
    "image.architecture",
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
)


@dataclass(frozen=True)
class Tier:
    """One storage tier. `group` holds (field, value) pairs of GROUP_FIELDS."""

    name: str
    volume_gib: int
    tasks: tuple[str, ...]
    group: tuple
    largest_task: str  # the task whose AMI and plan the tier uses (and whose name it bears)

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
        obj = None if obj is None else getattr(obj, part)  # an optional section that is absent
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
    if any(sizes[i] > sizes[i + 1] for i in range(n - 1)):
        raise ValueError("sizes must be sorted ascending")
    k = max(1, min(k, n))
    inf = float("inf")
    # best[t][j]: (cost, tiers used) for the first j sizes in at most t runs.
    best = [[(inf, 0)] * (n + 1) for _ in range(k + 1)]
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
    runs: list[tuple[int, int]] = []
    t, j = k, n
    while j > 0:
        i = choice[t][j]
        if i == -1:
            t -= 1
            continue
        runs.append((i, j))
        j, t = i, t - 1
    runs.reverse()
    return int(best[k][n][0]), runs


def _group_curve(sizes: Sequence[int]) -> list[tuple[int, list[tuple[int, int]]]]:
    """cost and runs for each number of tiers 1..distinct sizes (index 0 = 1 tier)."""
    distinct = len(set(sizes))
    return [optimal_partition(sizes, k) for k in range(1, distinct + 1)]


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


def choose_tiers(specs_and_plans: Iterable[tuple[Any, Any]], max_tiers: int | None = None) -> list[Tier]:
    """Optimal storage tiers for (TaskSpec, SizingPlan) pairs.

    max_tiers=None: no cap, so every distinct volume in a group is its own tier (nothing is
    over-provisioned). With a cap N, at most N tiers in all, each group at least one; the
    total provisioned GiB (sum over tasks of their tier's volume) is minimal.
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
                "differ in region, image base, architecture, volume mode, awscli prefix or batch "
                f"settings cannot share a tier. Fix: allow {len(keys)} tiers or more, or make "
                "those settings match"
            )
    members = {k: sorted(groups[k]) for k in keys}
    curves = [_group_curve([v for v, _ in members[k]]) for k in keys]
    if max_tiers is None:
        alloc = [len(c) for c in curves]
    else:
        alloc = _share_cap(curves, max_tiers)

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
    # "one name everywhere": a task alone in its tier has queue factory-<task>.
    return [Tier(name=largest, volume_gib=vol, tasks=tasks, group=key, largest_task=largest) for vol, key, tasks, largest in raw]


def provisioned_gib(tiers: Sequence[Tier]) -> int:
    """Sum over tasks of their tier's volume: what the tiers provision, one instance per task."""
    return sum(t.volume_gib * len(t.tasks) for t in tiers)


def tier_of(task: str, tiers: Sequence[Tier]) -> Tier:
    for t in tiers:
        if task in t.tasks:
            return t
    raise KeyError(task)


def tiers_for(specs: Sequence[Any], max_tiers: int | None = None, **size_options: Any) -> tuple[list[Tier], list[tuple[Any, Any]]]:
    """Size every spec and choose the tiers over them: (tiers, [(spec, plan), ...]).

    The one way the CLI and the register step get tiers, so `size --all`, `size TASK`,
    `register` and `nextflow-config` always agree. `size_options` go to size_task
    (e.g. price_per_gib_month).
    """
    from factory.sizing import size_specs

    pairs = size_specs(specs, **size_options)
    return choose_tiers(pairs, max_tiers=max_tiers), pairs
