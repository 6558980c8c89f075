"""The grow agent's decisions (factory_grow.decide), property-tested: pure functions, no I/O."""

from __future__ import annotations

import math

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from factory_grow.decide import (
    GIB,
    Policy,
    Sample,
    fill_rate,
    measured_add_seconds,
    step_gib,
    time_to_full,
    trigger,
)

MIB = 1024**2
rates = st.floats(min_value=0, max_value=4096 * MIB, allow_nan=False)
add_times = st.floats(min_value=1, max_value=300, allow_nan=False)
policies = st.builds(
    Policy,
    max_gib=st.integers(min_value=1, max_value=400_000),
    add_seconds=add_times,
    margin=st.floats(min_value=1, max_value=5),
    lag_seconds=st.floats(min_value=0, max_value=10),
    floor_fraction=st.floats(min_value=0, max_value=0.3),
    floor_gib=st.floats(min_value=0, max_value=50),
    min_step_gib=st.integers(min_value=1, max_value=500),
    step_seconds=st.floats(min_value=10, max_value=3600),
)


@given(policies, rates, rates, add_times, st.integers(min_value=0, max_value=400_000))
def test_a_faster_writer_never_gets_a_smaller_step(policy, r1, r2, add_s, pool_gib):
    lo, hi = sorted((r1, r2))
    assert step_gib(lo, add_s, pool_gib, policy) <= step_gib(hi, add_s, pool_gib, policy)


@given(policies, rates, add_times, st.integers(min_value=0, max_value=400_000))
def test_a_step_never_passes_max_gib_nor_one_volume(policy, rate, add_s, pool_gib):
    step = step_gib(rate, add_s, pool_gib, policy)
    assert 0 <= step <= policy.max_step_gib
    assert pool_gib + step <= max(policy.max_gib, pool_gib)
    assert (step == 0) == (pool_gib >= policy.max_gib)


@given(policies, rates, add_times, st.integers(min_value=0, max_value=100_000))
def test_a_step_covers_the_writing_while_the_next_add_runs(policy, rate, add_s, pool_gib):
    """Unless max_gib or one volume's size caps it, a step holds at least the trigger's
    window (margin x add time + lag) of writing at the current rate: the next trigger has
    time to act."""
    step = step_gib(rate, add_s, pool_gib, policy)
    if step < min(policy.max_gib - pool_gib, policy.max_step_gib):
        assert step * GIB >= rate * (policy.margin * add_s + policy.lag_seconds)


@given(policies, st.integers(min_value=0, max_value=2**44), st.integers(min_value=1, max_value=2**44), rates, rates, add_times)
def test_less_free_space_or_a_faster_writer_never_calls_off_a_trigger(policy, free, total, rate, faster, add_s):
    assume(free <= total)
    if trigger(free, total, rate, add_s, policy):
        assert trigger(free // 2, total, rate, add_s, policy)
        assert trigger(free, total, max(rate, faster), add_s, policy)


@given(policies, rates, st.integers(min_value=1, max_value=2**44), add_times)
def test_the_floor_triggers_without_any_writing(policy, rate, total, add_s):
    floor = max(policy.floor_fraction * total, policy.floor_gib * GIB)
    assume(floor >= 1)
    assert trigger(0, total, 0.0, add_s, policy) == "floor"
    assert trigger(math.ceil(floor), total, 0.0, add_s, policy) is None  # not filling, above the floor


@settings(max_examples=200, deadline=None)
@given(
    st.floats(min_value=1 * MIB, max_value=2048 * MIB),  # a steady writer
    st.floats(min_value=2, max_value=120),  # what an add takes
    st.floats(min_value=1.5, max_value=4),  # margin
    st.floats(min_value=0.1, max_value=1.0),  # sampling interval
    st.floats(min_value=0, max_value=3),  # how late free space shows a write
)
def test_a_steady_writer_is_caught_with_the_add_time_still_left(rate, add_s, margin, interval, signal_lag):
    """Sampled every `interval`, through a free-space signal `signal_lag` seconds late, a
    constant writer triggers the add while at least add_seconds of writing is truly left,
    when the policy's lag covers the signal's lag and one sample."""
    policy = Policy(max_gib=10**6, add_seconds=add_s, margin=margin, lag_seconds=signal_lag + interval,
                    floor_fraction=0, floor_gib=0)
    true_free = rate * (add_s * margin + signal_lag + interval * 6)  # a few samples before the trigger is due
    total = int(true_free + 10 * GIB)
    samples, t = [], 0.0
    while true_free > 0:
        seen = int(min(total, true_free + rate * signal_lag))  # what statfs says: the writes of the last `signal_lag` s missing
        samples.append(Sample(t=t, free=seen, total=total))
        samples = samples[-100:]
        if trigger(seen, total, fill_rate(samples, policy), add_s, policy):
            assert time_to_full(int(true_free), rate) >= add_s * 0.999
            return
        t += interval
        true_free -= rate * interval
    raise AssertionError("the disk filled without a trigger")


@given(st.floats(min_value=0, max_value=1024 * MIB), st.floats(min_value=0.2, max_value=2), st.integers(min_value=2, max_value=40))
def test_the_rate_of_a_steady_writer_is_its_rate(rate, interval, n):
    policy = Policy(max_gib=1)
    total = 10**13
    samples = [Sample(t=i * interval, free=int(total - rate * i * interval), total=total) for i in range(n)]
    assert math.isclose(fill_rate(samples, policy), rate, rel_tol=1e-3, abs_tol=2 / interval)


def test_an_add_is_not_writing_and_freed_space_is_not_negative():
    policy = Policy(max_gib=100)
    grown = [Sample(0, 1 * GIB, 10 * GIB), Sample(1, 11 * GIB, 20 * GIB)]  # +10 GiB added, nothing written
    assert fill_rate(grown, policy) == 0
    freed = [Sample(0, 1 * GIB, 10 * GIB), Sample(1, 5 * GIB, 10 * GIB)]
    assert fill_rate(freed, policy) == 0


def test_the_slowest_add_seen_is_planned_for():
    assert measured_add_seconds(30, []) == 30
    assert measured_add_seconds(30, [12.0, 41.5, 20.0]) == 41.5
