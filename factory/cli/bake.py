"""`factory bake`: validate, size, render, bake with Packer (or reuse), register.

Only options and output live here; the work is `factory.bake`. Progress goes to stderr
(a live status line per task on a terminal, plain timestamped lines otherwise), so
`--json` keeps stdout to one JSON document.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from pathlib import Path

import typer

from factory.cli.app import app
from factory.cli.common import DEFAULT_SPECS_DIR, err, handle_errors, print_json
from factory.cloud import CLOUDS
from factory.errors import UsageError


@app.command()
@handle_errors
def bake(
    task: str | None = typer.Argument(None, help="Task to bake (the spec's file stem), or a path to a spec file."),
    cloud: str = typer.Option("aws", "--cloud", help="aws: your AWS account; local: moto + a throwaway build host (no account)."),
    force: bool = typer.Option(False, "--force", help="Bake even when an AMI with the same content hash exists."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
    all_tasks: bool = typer.Option(False, "--all", help="Bake every spec in --specs-dir (each distinct image once)."),
    jobs: int = typer.Option(2, "--jobs", "-j", min=1, help="Bakes run in parallel with --all (on the local cloud: one build host per job)."),
    specs_dir: Path = typer.Option(DEFAULT_SPECS_DIR, "--specs-dir", help="Folder holding the task specs."),
    build_dir: Path = typer.Option(Path("build"), "--build-dir", help="Where build/<task>/ (Packer folder, packer.log) goes."),
    timeout: float = typer.Option(3600.0, "--timeout", min=1, help="Seconds a Packer build may take before it is interrupted and cleaned up."),
    no_register: bool = typer.Option(False, "--no-register", help="Stop after the AMI."),
    config: Path | None = typer.Option(
        None, "--config", help="Settings file (default: ./factory.yaml when present): builder and register settings; see docs/register.md."),
    refresh: bool = typer.Option(False, "--refresh", help="Resolve the bases of these tasks again (what AWS recommends now) and write them to the lock."),
    lock_path: Path | None = typer.Option(
        None, "--lock", help="The base lock (default: ./factory.lock; with --cloud local, the local cloud's .factory/factory.lock)."),
) -> None:
    """Bake a task's AMI with Packer and Ansible (reusing an identical one), then register it.

    The base AMI comes from the lock file (factory.lock); a base it lacks is resolved and added."""
    from factory.bake import bake_all, bake_task
    from factory.bake.summary import summary_json, write_summary
    from factory.spec import find_spec, load_specs

    if cloud not in CLOUDS:
        raise UsageError(f"--cloud must be one of {', '.join(CLOUDS)}, not {cloud!r}")
    if all_tasks == (task is not None):
        raise UsageError("name one TASK or pass --all, e.g. `factory bake salmon-quant` or `factory bake --all`")
    if all_tasks:
        if not specs_dir.is_dir():
            raise UsageError(f"no specs folder at {specs_dir}; run from the repository root or pass --specs-dir")
        specs = load_specs([specs_dir])
        if not specs:
            raise UsageError(f"no specs (*.yaml) in {specs_dir}")
    else:
        specs = [find_spec(task, specs_dir)]

    _sigterm_is_interrupt()
    board = StatusBoard([s.name for s in specs])
    from factory.config import load_config

    load_config(config)  # a wrong settings file stops here, before any cloud starts
    from factory import base_lock

    with _the_cloud(cloud, specs[0].region, config) as where, board:
        lock = base_lock.load(lock_path or base_lock.default_path(where))
        try:
            if all_tasks:
                results = bake_all(
                    specs, where, force=force, jobs=jobs, build_root=build_dir,
                    register=not no_register, on_step=board.step, timeout=timeout, lock=lock, refresh=refresh,
                )
            else:
                results = [bake_task(
                    specs[0], force=force, cloud=where, build_root=build_dir,
                    register=not no_register, on_step=board.step, timeout=timeout, lock=lock, refresh=refresh,
                )]
        finally:
            # What was resolved is written whatever the bake did after (it is AWS's answer, not the bake's).
            if lock.changed:
                lock.save()
            for note in lock.notes:
                err(note)

    failed = [r for r in results if r.status == "failed"]
    if all_tasks:
        summary = write_summary(results, build_dir / "bake-summary.json")
        if json_out:
            print_json(summary_json(results))
        else:
            _print_table(results)
            print(f"summary: {summary}")
        if failed:
            err(f"{len(failed)} of {len(results)} bakes failed: {', '.join(r.task for r in failed)}")
            raise typer.Exit(1)
        return
    result = results[0]
    if json_out:
        print_json(result.to_json())
    else:
        _print_one(result)


@contextlib.contextmanager
def _the_cloud(kind: str, region: str, config: Path | None = None):
    """Where the bake runs; a local cloud is started for it (and stopped after) when none runs."""
    from factory.cloud import Cloud

    if kind == "aws":
        yield Cloud("aws", config_path=config)
        return
    from factory.local import cloud as local_cloud
    from factory.local.aws.moto_server import CREDENTIALS_NOT_FOR_MOTO

    with local_cloud.using_local_cloud(region=region) as (lc, started):
        if started:
            err(f"started a local cloud for this bake ({lc.endpoint}); it stops when the bake ends")
        # Anything that makes its own boto3 client in this process talks to moto too,
        # without the user's session token or profile.
        for name in CREDENTIALS_NOT_FOR_MOTO:
            os.environ.pop(name, None)
        os.environ.update(lc.env(region))
        yield Cloud("local", lc, config_path=config)


def _print_one(r) -> None:
    verb = {"baked": "baked", "reused": "reused", "shared": "shares"}.get(r.status, r.status)
    print(f"{r.task}: {verb} {r.ami_id} in {r.region}  (base {r.base_ami}, volume {r.volume_gib} GiB)")
    print(f"  image hash  {r.image_hash}")
    if r.log:
        print(f"  packer log  {r.log}")
    if r.launch_template:
        lt = r.launch_template
        print(f"  launch template {lt.get('name')} version {lt.get('version')}")
        print(f"  compute environment {r.compute_environment}")
        print(f"  job queue {r.job_queue}")
    if r.note:
        print(f"  note: {r.note}")


def _print_table(results) -> None:
    """One short row per task (fits 80 columns); notes and errors below it, a failure that
    every task shares (registration) once."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from factory.bake.summary import shared_errors

    console = Console(highlight=False)
    table = Table(title="bake summary", box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False, show_edge=False)
    for col, justify in (("task", "left"), ("status", "left"), ("AMI", "left"), ("GiB", "right"),
                         ("job queue", "left"), ("s", "right")):
        table.add_column(col, justify=justify, no_wrap=col in ("task", "AMI"), overflow="fold")
    for r in results:
        table.add_row(r.task, r.status, r.ami_id or "-", str(r.volume_gib or "-"), r.job_queue or "-", f"{r.seconds:.0f}")
    console.print(table)
    for r in results:
        text = r.error or r.note
        if text:
            console.print(f"{r.task}: {text}", markup=False)
    for message in shared_errors(results):
        console.print(f"every task: {message}", markup=False)


class StatusBoard:
    """One live status line per task on a terminal (current step, elapsed); plain lines otherwise."""

    def __init__(self, tasks: list[str]):
        self.tasks = tasks
        self.started = {t: None for t in tasks}
        self.current = {t: "waiting" for t in tasks}
        self.t0 = time.monotonic()
        self.live = None
        self.lock = threading.Lock()
        self.tty = sys.stderr.isatty()

    def __enter__(self) -> StatusBoard:
        if self.tty:
            from rich.console import Console
            from rich.live import Live

            self.live = Live(self._render(), console=Console(stderr=True), refresh_per_second=4, transient=False)
            self.live.__enter__()
            threading.Thread(target=self._tick, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        if self.live is not None:
            self.live.update(self._render())
            self.live.__exit__(*exc)
            self.live = None

    def step(self, task: str, text: str) -> None:
        with self.lock:
            if self.started.get(task) is None:
                self.started[task] = time.monotonic()
            self.current[task] = text
        if self.live is not None:
            self.live.update(self._render())
        else:
            print(f"[{_elapsed(time.monotonic() - self.t0)}] {task}: {text}", file=sys.stderr, flush=True)

    def _tick(self) -> None:
        while self.live is not None:
            try:
                self.live.update(self._render())
            except Exception:
                return
            time.sleep(0.5)

    def _render(self):
        from rich.spinner import Spinner
        from rich.table import Table

        grid = Table.grid(padding=(0, 1))
        now = time.monotonic()
        with self.lock:
            for t in self.tasks:
                since = self.started[t]
                grid.add_row(
                    Spinner("dots"), f"[bold]{t}[/]", f"[dim]{_elapsed(now - since) if since else '--:--'}[/]",
                    self.current[t][:100],
                )
        return grid


def _elapsed(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m:02d}:{s:02d}"


def _sigterm_is_interrupt() -> None:
    """SIGTERM (CI cancel, `kill`) ends a bake like Ctrl-C: Packer cleans up first."""
    if threading.current_thread() is threading.main_thread():
        def _raise(signum, frame):
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, _raise)
