"""Sample how much disk something holds while it runs, and keep the peak.

Knows nothing about Docker: a `Sampler` calls a "how many bytes are held now" function
on a background thread every `interval` seconds and records the peak, the number of
samples, what each sample cost and the longest gap between two samples. `dir_bytes`
is the usual such function: the disk a set of directories holds, counted in allocated
blocks (`st_blocks * 512`, what `du` counts, so sparse files count what they hold, not
their length), each hard-linked file once.

    with Sampler(lambda: dir_bytes([upper_dir]), interval=0.25) as sampler:
        ...  # the work being measured
    sampler.peak_bytes, sampler.stats()

`factory measure` samples a container's writable layer with it; anything else that can
say how many bytes it holds (another engine's layer, a volume, `df`) can be sampled too.

Limits, by construction: a peak shorter than the gap between two samples may be missed
(`stats().max_gap_s` says how long the gaps really were), and a walk is not atomic (files
written or deleted while it runs are counted as the walk finds them). Bytes held by a
file that was deleted while still open are not in any directory and are not counted.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable

# Four samples a second: a peak held for one second is seen by at least three samples
# even when a sample of a large tree takes a good part of the interval
# (bench/measure measures what a sample costs).
DEFAULT_INTERVAL_S = 0.25


def dir_bytes(paths: Iterable[os.PathLike | str]) -> int:
    """Allocated bytes under `paths` (the directories themselves included), without following symlinks.

    Hard links are counted once. Entries that vanish while the walk runs are skipped (the
    thing measured keeps writing and deleting); a missing top-level path counts 0.
    """
    total = 0
    seen: set[tuple[int, int]] = set()
    stack: list[str] = []
    for p in paths:
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            continue
        total += st.st_blocks * 512
        if stat.S_ISDIR(st.st_mode):
            stack.append(os.fspath(p))
    while stack:
        top = stack.pop()
        try:
            entries = os.scandir(top)
        except (FileNotFoundError, NotADirectoryError):
            continue
        with entries:
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
                    key = (st.st_dev, st.st_ino)
                    if key in seen:
                        continue
                    seen.add(key)
                total += st.st_blocks * 512
                if stat.S_ISDIR(st.st_mode):
                    stack.append(entry.path)
    return total


@dataclass(frozen=True)
class SamplerStats:
    """What a sampler saw and what it cost."""

    samples: int
    peak_bytes: int
    interval_s: float
    mean_cost_s: float  # wall time one call of read_bytes took, on average
    max_cost_s: float
    max_gap_s: float  # the longest time between the starts of two consecutive samples

    def to_json(self) -> dict[str, float | int]:
        return {
            "samples": self.samples,
            "peak_bytes": self.peak_bytes,
            "interval_s": self.interval_s,
            "mean_cost_s": round(self.mean_cost_s, 6),
            "max_cost_s": round(self.max_cost_s, 6),
            "max_gap_s": round(self.max_gap_s, 3),
        }


class Sampler:
    """Calls `read_bytes()` every `interval` seconds on a thread; keeps the peak.

    Use as a context manager (or `start()` / `stop()`). `sample()` takes one sample now,
    from any thread (e.g. right before and right after the measured work, so the peak
    always includes both ends). An exception from `read_bytes` stops the sampling and is
    raised again by `stop()`.
    """

    def __init__(self, read_bytes: Callable[[], int], interval: float = DEFAULT_INTERVAL_S):
        if not interval > 0:
            raise ValueError("interval must be > 0 seconds")
        self.read_bytes = read_bytes
        self.interval = float(interval)
        self.peak_bytes = 0
        self.last_bytes = 0
        self.samples = 0
        self._cost_total = 0.0
        self._cost_max = 0.0
        self._last_cost = 0.0
        self._gap_max = 0.0
        self._last_start: float | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def sample(self) -> int:
        """Take one sample now; returns the bytes read."""
        with self._lock:
            start = time.monotonic()
            value = int(self.read_bytes())
            cost = time.monotonic() - start
            if self._last_start is not None:
                self._gap_max = max(self._gap_max, start - self._last_start)
            self._last_start = start
            self.samples += 1
            self._cost_total += cost
            self._cost_max = max(self._cost_max, cost)
            self._last_cost = cost
            self.last_bytes = value
            self.peak_bytes = max(self.peak_bytes, value)
            return value

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            try:
                self.sample()
            except BaseException as exc:  # handed to stop(), which raises it in the caller's thread
                self._error = exc
                return
            # A fixed rate, not a fixed pause: a slow sample does not push later ones back
            # further than it has to.
            next_at += self.interval
            now = time.monotonic()
            delay = next_at - now
            # Never more than half of one core: when a sample costs more than half the
            # interval (a layer of tens of thousands of files), pause at least as long as
            # it took. max_gap_s then reports the real spacing.
            if delay < self._last_cost:
                delay = self._last_cost
                next_at = now + delay
            self._stop.wait(delay)

    def start(self) -> Sampler:
        if self._thread is not None:
            raise RuntimeError("sampler already started")
        self._thread = threading.Thread(target=self._run, name="disk-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> SamplerStats:
        """Stop the thread (waits for a sample in progress) and return the stats."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        return self.stats()

    def stats(self) -> SamplerStats:
        with self._lock:
            return SamplerStats(
                samples=self.samples,
                peak_bytes=self.peak_bytes,
                interval_s=self.interval,
                mean_cost_s=self._cost_total / self.samples if self.samples else 0.0,
                max_cost_s=self._cost_max,
                max_gap_s=self._gap_max,
            )

    def __enter__(self) -> Sampler:
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.stop()
        else:  # the caller's exception wins; do not mask it with the sampler's
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
