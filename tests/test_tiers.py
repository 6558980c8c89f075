"""Storage tiers: optimal against brute force, grouping, the cap, names."""

from __future__ import annotations

import dataclasses
import itertools
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from factory.errors import UsageError
from factory.tiers import Tier, choose_tiers, optimal_partition, partition_cost, provisioned_gib, tier_group


def spec(name, region="us-east-1", base="ecs-al2023", arch="x86_64", provisioning="on-demand", max_vcpus=256):
    return SimpleNamespace(
        name=name,
        region=region,
        image=SimpleNamespace(base=base, architecture=arch, volume="launch-template", accelerator="none"),
        awscli=SimpleNamespace(prefix="/home/ec2-user/miniconda"),
        storage=SimpleNamespace(grow=None),  # a TaskSpec always has storage; grow is optional
        batch=SimpleNamespace(instance_types=("optimal",), min_vcpus=0, max_vcpus=max_vcpus,
                              provisioning=provisioning, allocation_strategy="BEST_FIT_PROGRESSIVE",
                              spot_bid_percentage=None),
    )


def plan(volume):
    return SimpleNamespace(volume_gib=volume)


def brute_force(sizes, k):
    """Every assignment of tasks to at most k tiers (not only contiguous ones)."""
    n = len(sizes)
    best = None
    for labels in itertools.product(range(k), repeat=n):
        cost = 0
        for t in set(labels):
            members = [sizes[i] for i in range(n) if labels[i] == t]
            cost += max(members) * len(members)
        best = cost if best is None else min(best, cost)
    return best


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(1, 400), min_size=1, max_size=6), st.integers(1, 4))
def test_partition_is_optimal_against_brute_force(sizes, k):
    sizes = sorted(sizes)
    cost, runs = optimal_partition(sizes, k)
    assert cost == brute_force(sizes, k)
    assert partition_cost(sizes, runs) == cost
    assert 1 <= len(runs) <= k
    assert [i for r in runs for i in range(*r)] == list(range(len(sizes)))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 300), st.sampled_from(["x86_64", "arm64"])), min_size=1, max_size=6),
       st.integers(2, 5))
def test_choose_tiers_is_optimal_across_groups(items, cap):
    pairs = [(spec(f"t{i}", arch=a), plan(v)) for i, (v, a) in enumerate(items)]
    groups = {tier_group(s) for s, _ in pairs}
    if cap < len(groups):
        with pytest.raises(UsageError):
            choose_tiers(pairs, cap)
        return
    tiers = choose_tiers(pairs, cap)
    assert len(tiers) <= cap
    by_name = {s.name: (s, p) for s, p in pairs}
    # Every task exactly once, never in a tier smaller than it, never across groups.
    seen = [t for tier in tiers for t in tier.tasks]
    assert sorted(seen) == sorted(by_name)
    for tier in tiers:
        assert {tier_group(by_name[t][0]) for t in tier.tasks} == {tier.group}
        assert tier.volume_gib == max(by_name[t][1].volume_gib for t in tier.tasks)
        assert by_name[tier.largest_task][1].volume_gib == tier.volume_gib
    # Brute force over every assignment of tasks to (group-respecting) tiers.
    n = len(pairs)
    best = None
    for labels in itertools.product(range(cap), repeat=n):
        cost, ok = 0, True
        for t in set(labels):
            members = [pairs[i] for i in range(n) if labels[i] == t]
            if len({tier_group(s) for s, _ in members}) > 1:
                ok = False
                break
            cost += max(p.volume_gib for _, p in members) * len(members)
        if ok:
            best = cost if best is None else min(best, cost)
    assert provisioned_gib(tiers) == best


def test_close_sizes_share_and_far_ones_do_not():
    pairs = [(spec("a"), plan(100)), (spec("b"), plan(105)), (spec("c"), plan(400)), (spec("d"), plan(410))]
    tiers = choose_tiers(pairs, 2)
    assert [(t.name, t.tasks) for t in tiers] == [("b", ("a", "b")), ("d", ("c", "d"))]
    assert tiers[0].largest_task == "b"


def test_no_cap_gives_one_tier_per_distinct_size():
    pairs = [(spec("a"), plan(50)), (spec("b"), plan(50)), (spec("c"), plan(80))]
    tiers = choose_tiers(pairs)
    assert [(t.name, t.tasks) for t in tiers] == [("b", ("a", "b")), ("c", ("c",))]
    assert provisioned_gib(tiers) == 180


def test_groups_never_mix_and_names_are_the_largest_task():
    pairs = [
        (spec("x"), plan(200)),
        (spec("y", arch="arm64"), plan(200)),
        (spec("z", provisioning="spot"), plan(200)),
        (spec("w", max_vcpus=16), plan(200)),
    ]
    tiers = choose_tiers(pairs, 4)
    names = [t.name for t in tiers]
    assert len(set(names)) == 4
    assert sorted(names) == ["w", "x", "y", "z"]  # each tier is named after its largest task
    assert all(len(t.tasks) == 1 for t in tiers)


def test_cap_below_group_count_is_refused():
    pairs = [(spec("a"), plan(10)), (spec("b", region="eu-west-1"), plan(10))]
    with pytest.raises(UsageError) as exc:
        choose_tiers(pairs, 1)
    assert "a cap of 1 tier (set by --max-tiers, else by tiers.max_tiers in factory.yaml)" in exc.value.message and "allow 2 tiers or more" in exc.value.message
    with pytest.raises(UsageError):
        choose_tiers(pairs, 0)


def test_duplicate_task_refused_and_empty_ok():
    with pytest.raises(UsageError, match="twice"):
        choose_tiers([(spec("a"), plan(1)), (spec("a"), plan(2))])
    assert choose_tiers([]) == []


def test_a_chosen_tier_carries_what_register_reads_and_is_frozen():
    (t,) = choose_tiers([(spec("small"), plan(120)), (spec("large"), plan(200))], 1)
    # register sizes the volume from the tier and takes the AMI of its largest task
    assert (t.volume_gib, t.largest_task, t.name, sorted(t.tasks)) == (200, "large", "large", ["large", "small"])
    assert isinstance(t, Tier) and dict(t.group)["region"] == "us-east-1"
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.volume_gib = 1  # type: ignore[misc]


def test_a_region_gets_at_most_what_batch_quotas_leave_room_for():
    """AWS Batch: 50 compute environments and 50 job queues per region, fixed; one
    environment is kept for a blue/green replacement. 100 distinct sizes gave 100 tiers."""
    from factory.tiers import REGION_TIERS

    pairs = [(spec(f"t{i:03d}"), plan(10 + i)) for i in range(100)]
    tiers = choose_tiers(pairs)
    assert REGION_TIERS == 49 and len(tiers) == 49
    assert sorted(n for t in tiers for n in t.tasks) == sorted(s.name for s, _ in pairs)
    # Another region's room is its own; a fuller account gives fewer.
    other = [(spec(f"o{i:03d}", region="eu-west-1"), plan(10 + i)) for i in range(60)]
    tiers = choose_tiers(pairs + other, room={"us-east-1": 10})
    by_region = {}
    for t in tiers:
        by_region[t.group_dict["region"]] = by_region.get(t.group_dict["region"], 0) + 1
    assert by_region == {"us-east-1": 10, "eu-west-1": 49}
    # With a cap of the user's as well, the smaller of the two binds.
    assert len(choose_tiers(pairs, 5, room={"us-east-1": 10})) == 5
    assert len(choose_tiers(pairs, 30, room={"us-east-1": 10})) == 10


def test_a_region_without_room_for_its_groups_is_refused_with_the_fix():
    pairs = [(spec("a"), plan(10)), (spec("b", arch="arm64"), plan(20))]
    with pytest.raises(UsageError, match=r"region us-east-1 has room for 1 tier .*fewer than its 2 tier groups. Fix: delete"):
        choose_tiers(pairs, room={"us-east-1": 1})


# ---------------------------------------------------------------------------------------
# Stable names (issue 22 §1): a tier keeps the name the account already has for it


def test_a_larger_spec_joining_a_group_renames_no_tier_the_account_has():
    from factory.tiers import keep_names

    two = [(spec("small"), plan(100)), (spec("medium"), plan(200))]
    before = choose_tiers(two, 2)
    assert [t.name for t in before] == ["small", "medium"]
    three = two + [(spec("large"), plan(300))]
    fresh = choose_tiers(three, 2)  # the larger spec joins medium's tier: named after it, it would move
    assert [(t.name, t.tasks) for t in fresh] == [("small", ("small",)), ("large", ("large", "medium"))]
    kept = keep_names(fresh, {"us-east-1": {"small", "medium"}})
    assert [(t.name, t.tasks, t.largest_task, t.volume_gib) for t in kept] == [
        ("small", ("small",), "small", 100),
        ("medium", ("large", "medium"), "large", 300),  # the AMI and volume are still the largest task's
    ]
    # Only the region's own names count; none there: the largest task's name, as before.
    assert [t.name for t in keep_names(fresh, {"eu-west-1": {"medium"}})] == ["small", "large"]
    assert keep_names(fresh, {}) == fresh


def test_merged_tiers_keep_the_largest_tasks_name_else_the_first_alphabetically():
    from factory.tiers import keep_names

    pairs = [(spec("b-small"), plan(100)), (spec("a-medium"), plan(200)), (spec("c-large"), plan(300))]
    merged = choose_tiers(pairs, 1)
    assert [t.name for t in keep_names(merged, {"us-east-1": {"b-small", "a-medium", "c-large"}})] == ["c-large"]
    assert [t.name for t in keep_names(merged, {"us-east-1": {"b-small", "a-medium"}})] == ["a-medium"]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 400), min_size=1, max_size=8), st.integers(1, 5), st.sets(st.integers(0, 7)))
def test_kept_names_are_unique_members_and_change_nothing_else(sizes, k, existing):
    from factory.tiers import keep_names

    pairs = [(spec(f"t{i}"), plan(s)) for i, s in enumerate(sizes)]
    tiers = choose_tiers(pairs, k)
    kept = keep_names(tiers, {"us-east-1": {f"t{i}" for i in existing}})
    assert len({t.name for t in kept}) == len(kept)
    for old, new in zip(tiers, kept):
        assert new.name in new.tasks and dataclasses.replace(new, name=old.name) == old


def test_every_command_chooses_within_the_room_register_recorded_with_the_accounts_names():
    """factory.register.tier_choice.choose: what nextflow-config, prune, status, show and
    rollback use, from what the account says (no AWS here)."""
    from factory.register.tier_choice import AccountTiers, choose

    pairs = [(spec("small"), plan(100)), (spec("medium"), plan(200)), (spec("large"), plan(300))]
    unrecorded = AccountTiers("us-east-1", None, frozenset())
    assert [t.name for t in choose(pairs, None, {"us-east-1": unrecorded})] == ["small", "medium", "large"]
    recorded = AccountTiers("us-east-1", 2, frozenset({"small", "medium"}))
    assert [(t.name, t.tasks) for t in choose(pairs, None, {"us-east-1": recorded})] == [("small", ("small",)), ("medium", ("large", "medium"))]
    # A record below the tier groups (a spec of a new group came after the last register):
    # one tier a group, not a refusal.
    arm = [(spec("arm", arch="arm64"), plan(50))]
    one = AccountTiers("us-east-1", 1, frozenset())
    assert sorted(t.name for t in choose(pairs + arm, None, {"us-east-1": one})) == ["arm", "large"]
