"""A measured run as a benchmark CSV row, appended to the task's file atomically.

The file format is factory.sizing's (required columns, `#` comments, extra columns kept);
this module only writes it. `factory measure` adds the columns below; a file that lacks
some of them (e.g. one written by hand) gets them added to its header, its earlier rows
left empty there, and every other byte of it is kept. The new file is checked with the
sizing loader, written next to the old one and renamed over it, under a lock on the
folder, so a reader sees the old file or the new one, never half of one, and two runs
appending at once both land.
"""

from __future__ import annotations

import csv
import fcntl
import io
import os
from pathlib import Path
from typing import Any

from factory.errors import MeasureError, SizingError
from factory.sizing import BenchmarkRecord, load_benchmarks, parse_benchmarks

GIB = 1024**3

# In this order in a new file; sizing needs the four *_gib after `sample`, the rest is the record.
COLUMNS = (
    "sample", "input_gib", "index_gib", "scratch_gib", "output_gib", "peak_gib",
    "wall_s", "exit_status", "failed", "image", "image_digest", "date", "disk_reader",
)


def header_comment(interval_s: float) -> str:
    """The comment a new benchmark file starts with: how its rows were measured."""
    from factory import __version__

    return (
        f"# Measured with `factory measure` (factory {__version__}): one row per run of the task in a\n"
        "# container, its --input and --index copied into the working directory as Nextflow stages\n"
        "# a task on AWS Batch. input_gib, index_gib: the staged copies; output_gib: what the working\n"
        "# directory held beyond them when the command exited; scratch_gib: the rest of the peak.\n"
        f"# The four add up to peak_gib, the most disk the container's writable layer held, sampled\n"
        f"# every {interval_s:g} s (a peak shorter than that may be missed). GiB = 2^30 bytes: allocated\n"
        "# blocks where disk_reader=layer (the layer read on disk), apparent file sizes where\n"
        "# disk_reader=engine (read through the Docker engine). failed=yes rows are kept, not fitted.\n"
    )


def make_row(m: Any, sample: str, failed: bool) -> dict[str, Any]:
    """The row of a `factory.measure.Measurement`, with typed values (as --json prints it)."""
    gib = {k: round(getattr(m, f"{k}_bytes") / GIB, 6) for k in ("input", "index", "scratch", "output")}
    return {
        "sample": sample,
        "input_gib": gib["input"],
        "index_gib": gib["index"],
        "scratch_gib": gib["scratch"],
        "output_gib": gib["output"],
        # The rounded columns' own sum, so the file adds up exactly as the sizing model adds.
        "peak_gib": round(sum(gib.values()), 6),
        "wall_s": m.wall_s,
        "exit_status": m.exit_status,
        "failed": failed,
        "image": m.image,
        "image_digest": m.image_digest,
        "date": m.date,
        "disk_reader": m.disk_reader,
    }


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"{value:g}" if isinstance(value, float) and abs(value) >= 1e-4 else str(value)


def existing_records(path: Path) -> list[BenchmarkRecord]:
    """The records already in `path` ([] when it does not exist or holds only comments).

    Checked before a run, so a file the sizing loader would refuse stops the measurement
    before its hour of work instead of after it.
    """
    if not path.exists():
        return []
    if _header_index(path.read_text(encoding="utf-8-sig").splitlines()) is None:
        return []
    try:
        return load_benchmarks(path)
    except SizingError as exc:
        raise MeasureError(f"cannot append to {exc.message}; fix the file first (or pass --benchmarks NEW.csv)") from None


def _header_index(lines: list[str]) -> int | None:
    for i, line in enumerate(lines):
        if line.strip() and not line.lstrip().startswith("#"):
            return i
    return None


def _csv_line(values: list[str]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow(values)
    return buf.getvalue()


def append_row(path: Path, row: dict[str, Any], interval_s: float) -> None:
    """Append `row` to the benchmark CSV at `path`, creating it (with its header and comment) when missing."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise MeasureError(f"{path}: folder {folder} does not exist; create it or fix the benchmark path")
    lock = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        text = path.read_text(encoding="utf-8-sig") if path.exists() else ""
        lines = text.splitlines()
        at = _header_index(lines)
        if at is None:
            lines = (lines or header_comment(interval_s).splitlines()) + [_csv_line(list(COLUMNS))]
            at = len(lines) - 1
        header = [h.strip() for h in next(csv.reader([lines[at]]))]
        missing = [c for c in COLUMNS if c not in header]
        if missing:
            lines[at] = lines[at] + "," + ",".join(missing)
            for i in range(at + 1, len(lines)):
                if lines[i].strip() and not lines[i].lstrip().startswith("#"):
                    lines[i] = lines[i] + "," * len(missing)
            header += missing
        lines.append(_csv_line([_cell(row[h]) if h in row else "" for h in header]))
        new_text = "\n".join(lines) + "\n"
        parse_benchmarks(new_text, source=str(path))  # the loader reads what we write, or nothing is written
        _write_atomically(path, new_text)
    finally:
        os.close(lock)


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def task_volume(spec_path: Path, records: list[BenchmarkRecord] | None = None) -> tuple[int | None, str]:
    """The task's volume in GiB, sized from `records` (None: the spec's own benchmark file), or None and why not."""
    from factory.errors import FactoryError
    from factory.sizing import size_task
    from factory.spec import load_spec

    try:
        return size_task(load_spec(spec_path), records).volume_gib, ""
    except FactoryError as exc:
        return None, exc.message.splitlines()[0]


def row_effect(previous: list[BenchmarkRecord], row: dict[str, Any]) -> tuple[str, ...]:
    """Warnings about the new run against the earlier (non-failed) ones."""
    if row["failed"]:
        return ("the run failed: its row is kept (failed=yes) but left out of the fit",)
    earlier = [r for r in previous if not r.failed]
    if not earlier:
        return ("the first run in this file: add runs at other input sizes (at least 2 for a fit, 3 for a bound)",)
    out = []
    lo, hi = min(r.input_gib for r in earlier), max(r.input_gib for r in earlier)
    x = row["input_gib"]
    if x < lo or x > hi:
        out.append(f"input {x:g} GiB lies outside the benchmarked input range {lo:g}..{hi:g} GiB: the fit now reaches further")
    largest = max(r.footprint_gib for r in earlier)
    if row["peak_gib"] > largest:
        out.append(f"the largest run so far: {row['peak_gib']:g} GiB (previous largest {largest:g} GiB); no task will be sized below it")
    return tuple(out)
