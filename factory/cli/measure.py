"""`factory measure`: run a task in a container, measure its disk, append a benchmark row (issue 11).

    factory measure [TASK] --image IMAGE --input PATH... [--index PATH...] [--benchmarks FILE]
                    [--sample NAME] [--network NET] [--keep-failed] [--json] -- COMMAND [ARG...]

Thin over factory.measure (the run), factory.benchmark_rows (the row and the file).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer
from typer.core import TyperCommand

from factory.cli.app import app
from factory.cli.common import DEFAULT_SPECS_DIR, err, handle_errors, print_json
from factory.errors import MeasureError, UsageError

EXAMPLE = "factory measure salmon-quant --image salmon:1.10 --input s01_R1.fq.gz --input s01_R2.fq.gz --index salmon_index -- salmon quant ..."


class _CommandAfterDashes(TyperCommand):
    """Everything after the first `--` is COMMAND, kept whole (its own options included) in ctx.meta."""

    def parse_args(self, ctx, args):
        if "--" in args:
            at = args.index("--")
            ctx.meta["measure_command"] = tuple(args[at + 1:])
            args = args[:at]
        return super().parse_args(ctx, args)

    def collect_usage_pieces(self, ctx):
        return [*super().collect_usage_pieces(ctx), "-- COMMAND [ARG...]"]


@app.command(cls=_CommandAfterDashes)
@handle_errors
def measure(
    ctx: typer.Context,
    task: Optional[str] = typer.Argument(None, help="Task name (specs/<task>.yaml) or a spec file: append to its storage.benchmarks."),
    image: str = typer.Option(..., "--image", metavar="IMAGE", help="The task's container image (on the Docker engine already; it is not pulled)."),
    inputs: List[Path] = typer.Option([], "--input", metavar="PATH", help="An input file or folder, copied into the working directory; repeat for each."),
    index: List[Path] = typer.Option([], "--index", metavar="PATH", help="A reference/index file or folder, copied likewise; repeat for each."),
    benchmarks: Optional[Path] = typer.Option(None, "--benchmarks", metavar="FILE", help="Append to this CSV instead (created when missing)."),
    sample: Optional[str] = typer.Option(None, "--sample", help="The row's sample name (default: the first input's name)."),
    network: str = typer.Option("none", "--network", help="Docker network for the container (default none: no network)."),
    workdir: str = typer.Option("/work", "--workdir", help="The working directory inside the container."),
    disk_reader: str = typer.Option(
        "auto", "--disk-reader",
        help="How to read the container's disk: layer (its overlay2 directory on this machine; needs root), "
        "engine (docker inspect --size; any engine, slower, apparent sizes), auto (layer when readable, else engine).",
    ),
    keep_failed: bool = typer.Option(False, "--keep-failed", help="Record a run whose command failed, marked failed=yes (not fitted)."),
    specs_dir: Path = typer.Option(DEFAULT_SPECS_DIR, "--specs-dir", help="Folder of task specs."),
    json_output: bool = typer.Option(False, "--json", help="Print the new row as JSON, nothing else on stdout."),
) -> None:
    """Run COMMAND (after --) in a container of IMAGE, measure the disk it holds, append a benchmark row.

    \b
    factory measure [TASK] --image IMAGE --input PATH... [--index PATH...]
                    [--benchmarks FILE] [--json] -- COMMAND [ARG...]

    Each --input and --index is copied into the container's working directory under its own
    name (as Nextflow stages a task on AWS Batch); the container's disk is sampled while
    COMMAND runs. The row's input, index, scratch and output add up to the peak.
    """
    from factory.benchmark_rows import append_row, existing_records, make_row, row_effect, task_volume
    from factory.measure import MeasureRun, check_paths, measure, staged_name

    command = ctx.meta.get("measure_command", ())
    if not command:
        raise UsageError(f"give the command to measure after --, e.g. {EXAMPLE}")
    spec_path = None
    if task is not None:
        from factory.spec import benchmarks_file, display, find_spec_file

        spec_path = find_spec_file(task, specs_dir)
        if benchmarks is None:
            benchmarks = benchmarks_file(spec_path)
            if benchmarks is None:
                raise UsageError(
                    f"{display(spec_path)}::storage.benchmarks: not set, so there is no file to append to; "
                    f"add `storage.benchmarks: benchmarks/{spec_path.stem}.csv` to the spec or pass --benchmarks FILE"
                )
    elif benchmarks is None:
        raise UsageError(f"give TASK (its storage.benchmarks gets the row) or --benchmarks FILE, e.g. {EXAMPLE}")
    check_paths(tuple(inputs), tuple(index))
    previous = existing_records(benchmarks)  # a broken file stops us now, not after the run
    before = task_volume(spec_path, previous if _other_file(spec_path, benchmarks) else None) if spec_path else None

    run = MeasureRun(image=image, command=tuple(command), inputs=tuple(inputs), index=tuple(index), network=network, workdir=workdir, disk_reader=disk_reader)
    m = measure(run, log=None if json_output else sys.stderr)
    failed = m.exit_status != 0
    if failed and not keep_failed:
        tail = f"; its last output:\n{m.log_tail}" if m.log_tail else ""
        oom = " (killed for lack of memory)" if m.oom_killed else ""
        raise MeasureError(
            f"the command exited with status {m.exit_status}{oom}; no row written to {benchmarks} "
            f"(fix the command, or pass --keep-failed to record the run marked failed){tail}"
        )
    row = make_row(m, sample or staged_name(inputs[0]), failed)
    append_row(benchmarks, row, run.interval)

    notes = list(m.notes) + list(row_effect(previous, row))
    if json_output:
        print_json(row)
    else:
        print(f"{benchmarks}: +1 row")
        for key in ("sample", "input_gib", "index_gib", "scratch_gib", "output_gib", "peak_gib", "wall_s", "exit_status", "failed", "image_digest", "date", "disk_reader"):
            value = row[key]
            print(f"  {key:<12} {('yes' if value else 'no') if isinstance(value, bool) else value}")
        s = m.sampler
        print(f"  sampled {s.samples} times every {s.interval_s:g} s (a sample cost {s.mean_cost_s * 1000:.1f} ms on average, longest gap {s.max_gap_s:.2f} s)")
    out = sys.stderr if json_output else sys.stdout
    if spec_path is not None:
        after = task_volume(spec_path, existing_records(benchmarks) if _other_file(spec_path, benchmarks) else None)
        print(f"{spec_path.stem}: volume {_volume(before)} -> {_volume(after)}", file=out)
    for note in notes:
        err(f"warning: {note}")


def _other_file(spec_path: Optional[Path], benchmarks: Path) -> bool:
    """Whether the row goes to a file other than the spec's own (then the task is sized from that file)."""
    from factory.spec import benchmarks_file

    own = benchmarks_file(spec_path) if spec_path else None
    return own is None or own != benchmarks.resolve()


def _volume(result: Optional[tuple]) -> str:
    gib, why = result
    return f"{gib} GiB" if gib is not None else f"(cannot be sized: {why})"
