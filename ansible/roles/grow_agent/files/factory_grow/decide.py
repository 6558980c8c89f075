"""When to add space and how much: pure functions over disk samples (no I/O, no clock).

The agent samples the data root once a second: (time, free bytes, total bytes).

- **Fill rate**: the faster of a short window (the last few seconds, so a burst is seen
  at once) and a longer one (so a steady writer is not missed between bursts), never
  negative: space freed by a finished task does not cancel a writer.
- **Trigger**: add when the time left to full at that rate is no more than the time an
  add takes times a margin (`add_seconds` is measured on this instance, and starts from
  a prior), plus the lag of the signal itself (filesystems report writes to statfs up to
  a couple of seconds late, and a sample is up to a second old); or when free space falls
  under a floor (a fraction of the total, at least `floor_gib`): the floor covers a writer
  that starts at full speed between samples.
- **Step**: enough for `step_seconds` of writing at the current rate plus the add's own
  time, at least `min_step_gib`, so a fast writer gets a big step and a slow one a small
  one; never past `max_gib` nor past the attachment limit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

GIB = 1024**3


@dataclass(frozen=True)
class Sample:
    t: float  # seconds (monotonic)
    free: int  # bytes free to unprivileged writers (statvfs f_bavail)
    total: int  # bytes in the filesystem


@dataclass(frozen=True)
class Policy:
    max_gib: int  # the most the pool may grow to (storage.grow.max_gib)
    add_seconds: float = 30.0  # prior for trigger -> usable space, replaced by measurements
    margin: float = 2.0  # act when time-to-full <= margin x add_seconds + lag_seconds
    lag_seconds: float = 3.0  # how late free space shows a write (about 2 s, docs/sizing.md) plus one sample
    floor_fraction: float = 0.05  # and when free < this fraction of the total ...
    floor_gib: float = 2.0  # ... or under this many GiB, whichever is larger
    min_step_gib: int = 10
    max_step_gib: int = 16384  # one gp3 volume
    step_seconds: float = 600.0  # a step holds this long of writing at the current rate
    short_window: float = 3.0
    long_window: float = 30.0


def fill_rate(samples: Sequence[Sample], policy: Policy) -> float:
    """Bytes per second the disk is filling at (>= 0), from samples ordered by time.

    Growth of the total (an add) is not writing: the rate is taken over used bytes."""
    if len(samples) < 2:
        return 0.0
    last = samples[-1]
    best = 0.0
    for window in (policy.short_window, policy.long_window):
        first = next((s for s in samples if last.t - s.t <= window), samples[-2])
        if first is last:
            first = samples[-2]
        dt = last.t - first.t
        if dt > 0:
            used = (last.total - last.free) - (first.total - first.free)
            best = max(best, used / dt)
    return best


def time_to_full(free: int, rate: float) -> float:
    """Seconds until `free` bytes are gone at `rate` bytes/s (inf when not filling)."""
    if rate <= 0:
        return math.inf
    return max(free, 0) / rate


def floor_bytes(total: int, policy: Policy) -> float:
    return max(policy.floor_fraction * total, policy.floor_gib * GIB)


def trigger(free: int, total: int, rate: float, add_seconds: float, policy: Policy) -> str | None:
    """Why to add space now ("time-to-full" or "floor"), or None."""
    if time_to_full(free, rate) <= policy.margin * add_seconds + policy.lag_seconds:
        return "time-to-full"
    if free < floor_bytes(total, policy):
        return "floor"
    return None


def step_gib(rate: float, add_seconds: float, pool_gib: int, policy: Policy) -> int:
    """GiB to add now for a disk filling at `rate` bytes/s whose pool is `pool_gib` (0: none left)."""
    room = policy.max_gib - pool_gib
    if room <= 0:
        return 0
    want = rate * (policy.step_seconds + policy.margin * add_seconds + policy.lag_seconds) / GIB
    step = max(policy.min_step_gib, math.ceil(want))
    return int(min(step, policy.max_step_gib, room))


def measured_add_seconds(prior: float, measured: Sequence[float]) -> float:
    """The add time to plan with: the slowest add seen on this instance, else the prior.

    Conservative on purpose: a slow add (a throttled call, a capacity retry) is the one the
    next trigger must survive."""
    return max(measured) if measured else prior
