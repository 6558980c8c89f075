"""`factory status` and `factory rollback`: is each task's image current, and going back.

    factory status [TASK...] [--check] [--json]     the AMI in use, its base, AWS's base now, ...
    factory rollback TASK [--to AMI] [--dry-run]     the previous AMI (the parameter's history)

Thin over factory.status and factory.rollback.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from factory.cli.app import app
from factory.cli.common import DEFAULT_SPECS_DIR, err, handle_errors, print_json, stdout_console

_SPECS = typer.Option(DEFAULT_SPECS_DIR, "--specs-dir", help="Folder of task specs.")
_CONFIG = typer.Option(None, "--config", help="Settings file (default: ./factory.yaml when present); see docs/register.md.")
_CLOUD = typer.Option("aws", "--cloud", help="aws: your AWS account; local: the running local cloud (`factory local up`).")


def _specs(tasks: list[str] | None, specs_dir: Path):
    from factory.spec import find_spec, load_specs

    everything = load_specs([specs_dir])
    by_name = {s.name: s for s in everything}
    selected = [by_name.get(t) or find_spec(t, specs_dir) for t in tasks] if tasks else everything
    for s in selected:
        by_name.setdefault(s.name, s)
    return selected, list(by_name.values())


def _yes_no(value: bool | None, yes: str, no: str) -> str:
    return "?" if value is None else (yes if value else no)


@app.command()
@handle_errors
def status(
    tasks: Optional[List[str]] = typer.Argument(None, help="Tasks to show (default: every spec in --specs-dir)."),
    check: bool = typer.Option(False, "--check", help="Exit 1 when a task is stale, naming each and why (for CI)."),
    specs_dir: Path = _SPECS,
    config: Optional[Path] = _CONFIG,
    cloud: str = _CLOUD,
    json_output: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
    lock_path: Optional[Path] = typer.Option(
        None, "--lock", help="The base lock (default: ./factory.lock; with --cloud local, the local cloud's .factory/factory.lock)."),
) -> None:
    """Show per task the AMI in use, its base, the locked base and what AWS recommends now, what changed since the bake, the queue."""
    from factory import base_lock
    from factory.cloud import Cloud
    from factory.config import load_config
    from factory.status import task_status

    selected, everything = _specs(tasks, specs_dir)
    where = Cloud.open(cloud)
    where.config_path = config  # the builder settings the image hash is taken with
    lock = base_lock.load(lock_path or base_lock.default_path(where))
    report = task_status(selected, everything, where, load_config(config), lock=lock)
    if json_output:
        print_json(report.to_json())
    else:
        _print_report(report)
    if check and report.stale:
        for t in report.stale:
            for reason in t.stale:
                err(f"{t.task} is stale: {reason}")
        raise typer.Exit(1)


def _print_report(report) -> None:
    from rich.table import Table

    console = stdout_console()
    table = Table(title="factory status", title_justify="left")
    for col in ("task", "tier", "AMI in use", "baked on", "AWS recommends", "spec", "image", "launch template", "queue", "status"):
        table.add_column(col, overflow="fold")
    seen: set[str] = set()
    for t in report.tasks:
        base_note = {"newer": " (newer than the lock)", "backwards": " (older than the lock: rolled back)",
                     "changed": " (not the lock's)"}.get(t.lock_state or "", "")
        if not t.locked_base and t.base_current is False:
            base_note = " (newer)"
        label = t.task if t.task not in seen else f"{t.task} ({t.region})"  # a region it is distributed to
        if t.account:  # a copy_to account it is registered in
            label = f"{t.task} ({t.account}:{t.region})"
        seen.add(t.task)
        table.add_row(
            label,
            t.tier,
            t.ami_in_use or "-",
            t.base_ami or "-",
            (t.recommended_base or "-") + base_note,
            _yes_no(t.spec_changed, "changed", "same"),
            _yes_no(t.image_changed, "changed", "same"),
            f"{t.launch_template} v{t.launch_template_version}" if t.launch_template else "-",
            f"{t.queue} {t.queue_state or 'missing'}",
            "[red]stale[/]" if t.stale else "[green]current[/]",
        )
    console.print(table)
    for t in report.tasks:
        for reason in t.stale:
            console.print(f"{t.task}: stale: {reason}", highlight=False, markup=False)
        for note in t.notes:
            console.print(f"{t.task}: note: {note}", highlight=False, markup=False)
    for line in report.draining:
        console.print(f"draining: {line}", highlight=False, markup=False)
    stale = report.stale
    console.print(f"stale: {', '.join(t.task for t in stale)}" if stale else "every task is current", highlight=False, markup=False)


@app.command()
@handle_errors
def rollback(
    task: str = typer.Argument(..., help="Task name (specs/<task>.yaml) or a spec file."),
    to: Optional[str] = typer.Option(None, "--to", help="The AMI to go back to (default: the one before the current in /factory/TASK/ami-id)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only show what would change."),
    specs_dir: Path = _SPECS,
    config: Optional[Path] = _CONFIG,
    cloud: str = _CLOUD,
    json_output: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Register the task's previous AMI again (a new launch template version; its parameter moves back)."""
    from factory.cloud import Cloud
    from factory.rollback import rollback as rollback_core

    selected, everything = _specs([task], specs_dir)
    where = Cloud.open(cloud)
    where.config_path = config
    settings = where.register_config(config)
    done = rollback_core(selected[0], everything, where, to, config=settings, dry_run=dry_run, progress=None if json_output else err)
    if json_output:
        print_json(done.to_json())
        return
    console = stdout_console()
    verb = "would roll" if dry_run else "rolled"
    console.print(f"{verb} {done.task} back: {done.from_ami or 'nothing'} -> {done.to_ami} ({done.source})", highlight=False, markup=False)
    if done.ami_task != done.task:
        console.print(f"  tier {done.tier} runs on the AMI of {done.ami_task}: every task of the tier moves", highlight=False, markup=False)
    for tier in done.result.tiers:
        for c in tier.changes:
            console.print(f"  {c.resource} {c.name}: {c.action}: {c.reason}", highlight=False, markup=False)
        for note in tier.notes:
            console.print(f"  note: {note}", highlight=False, markup=False)
    for region, there in (done.regions or {}).items():
        if isinstance(there, str):
            console.print(f"  {region}: {there}", highlight=False, markup=False)
            continue
        for tier in there.tiers:
            for c in tier.changes:
                console.print(f"  {region}: {c.resource} {c.name}: {c.action}: {c.reason}", highlight=False, markup=False)
