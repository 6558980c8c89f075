"""`factory plan`, `register`, `nextflow-config`, `prune` (issue 7). Thin over factory.register.

    factory plan [TASK | --all]                         what register would do; changes nothing
    factory register [TASK | --all] [--ami AMI] [--dry-run] [--json]
    factory nextflow-config [TASK... | --all] [--out FILE]
    factory prune [--keep N] [--builder-hours H] [--apply]  dry run unless --apply
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

import typer

from factory.cli.app import app
from factory.cli.common import DEFAULT_SPECS_DIR, err, handle_errors, print_json, stdout_console
from factory.errors import UsageError

_SPECS = typer.Option(DEFAULT_SPECS_DIR, "--specs-dir", help="Folder of task specs.")
_CONFIG = typer.Option(None, "--config", help="Settings file (default: ./factory.yaml when present); see docs/register.md.")
_CLOUD = typer.Option("aws", "--cloud", help="aws: your AWS account; local: the running local cloud (`factory local up`).")


def _select(task: Optional[str], all_specs: bool, specs_dir: Path, example: str) -> tuple[list[Any], list[Any]]:
    """(selected specs, every spec in the folder): tiers are always chosen over all of them."""
    from factory.spec import find_spec, load_specs

    if bool(task) == bool(all_specs):
        raise UsageError(f"give a TASK or --all, not {'both' if task else 'neither'} (e.g. {example})")
    if task:
        spec = find_spec(task, specs_dir)
        folder_specs = load_specs([spec.path.parent])
        if spec.name not in {s.name for s in folder_specs}:
            folder_specs.append(spec)
        return [spec], folder_specs
    everything = load_specs([specs_dir])
    return everything, everything


def _run(command, task, all_specs, specs_dir, config_path, ami, dry_run, progress, cloud_kind):
    from factory.cloud import Cloud
    from factory.register import register_tasks

    selected, everything = _select(task, all_specs, specs_dir, f"factory {command} salmon-quant, factory {command} --all")
    if ami and not task:
        raise UsageError(f"--ami goes with one TASK (e.g. factory {command} salmon-quant --ami ami-0123...)")
    if ami and not ami.startswith("ami-"):
        raise UsageError(f"--ami {ami!r} is not an AMI id (ami-...)")
    # Region from the specs; the account (AWS, or the local cloud's moto) from --cloud;
    # endpoint and credentials otherwise from the usual AWS settings.
    cloud = Cloud.open(cloud_kind)
    cloud.config_path = config_path  # the builder settings an AMI's image hash is checked with
    config = cloud.register_config(config_path)
    overrides = {selected[0].name: ami} if ami else None
    region = selected[0].region
    return register_tasks(
        selected, cloud.clients(region), overrides, dry_run, config=config, all_specs=everything, progress=progress, image_target=cloud.image_target(region)
    )


def _print_result(result, title: str) -> None:
    from rich.table import Table

    console = stdout_console()
    table = Table(title=title, title_justify="left")
    for col in ("tier", "resource", "name", "action", "reason"):
        table.add_column(col, overflow="fold")
    styles = {"create": "green", "update": "yellow", "replace": "magenta", "delete": "red", "drain": "cyan", "unchanged": "dim"}
    for tier in result.tiers:
        for i, c in enumerate(tier.changes):
            table.add_row(tier.tier if i == 0 else "", c.resource, c.name, f"[{styles.get(c.action, '')}]{c.action}[/]", c.reason)
    console.print(table)
    for tier in result.tiers:
        console.print(
            f"tier {tier.tier} ({', '.join(tier.tasks)}): AMI {tier.ami_id} ({tier.ami_source}), {tier.volume_gib} GiB, "
            f"queue {tier.job_queue}", highlight=False, markup=False
        )
        for note in tier.notes:
            console.print(f"  note: {note}", highlight=False, markup=False)
    for note in result.notes:
        console.print(f"note: {note}", highlight=False, markup=False)
    networks = {t.network.source for t in result.tiers}
    for source in sorted(networks):
        console.print(f"subnets and security groups: {source}", highlight=False, markup=False)
    console.print(f"config: {result.config_source}", highlight=False, markup=False)
    console.print("unchanged: nothing to do" if not result.changed else ("dry run: nothing was changed" if result.dry_run else "done"), highlight=False, markup=False)


@app.command()
@handle_errors
def plan(
    task: Optional[str] = typer.Argument(None, help="Task name (specs/<task>.yaml) or a spec file."),
    all_specs: bool = typer.Option(False, "--all", help="Every spec in --specs-dir."),
    ami: Optional[str] = typer.Option(None, "--ami", help="Plan with this AMI for TASK instead of its newest baked one."),
    specs_dir: Path = _SPECS,
    config: Optional[Path] = _CONFIG,
    cloud: str = _CLOUD,
    json_output: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Show what `register` would create, change or leave alone (reads AWS, changes nothing)."""
    result = _run("plan", task, all_specs, specs_dir, config, ami, True, None, cloud)
    regions = _plan_copies(task, all_specs, specs_dir, config, cloud, result)
    if json_output:
        data = result.to_json()
        if regions:
            data["regions"] = {r: (v if isinstance(v, str) else v.to_json()) for r, v in regions.items()}
        print_json(data)
    else:
        _print_result(result, "factory plan")
        for region, there in regions.items():
            if isinstance(there, str):
                stdout_console().print(f"{region}: {there}", highlight=False, markup=False)
            else:
                what = "an account and region the tasks are copied to" if ":" in region else "a region the tasks are distributed to"
                _print_result(there, f"factory plan ({region}, {what})")


def _plan_copies(task, all_specs, specs_dir, config_path, cloud_kind, home):
    """The plan in every region the selected tasks are distributed to, and in every copy_to
    account they are registered in (`ACCOUNT:REGION`; factory.distribute.registration)."""
    from factory.cloud import Cloud
    from factory.distribute.registration import plan_accounts, plan_copies

    selected, everything = _select(task, all_specs, specs_dir, "factory plan salmon-quant")
    where = Cloud.open(cloud_kind)
    where.config_path = config_path
    config = where.register_config(config_path)
    regions = plan_copies(selected, everything, where.clients, config, home, image_target_for=where.image_target)
    return {**regions, **plan_accounts(selected, where.clients, config, home, image_target_for=where.image_target)}


@app.command()
@handle_errors
def register(
    task: Optional[str] = typer.Argument(None, help="Task name (specs/<task>.yaml) or a spec file."),
    all_specs: bool = typer.Option(False, "--all", help="Every spec in --specs-dir."),
    ami: Optional[str] = typer.Option(None, "--ami", help="Use this AMI for TASK instead of its newest baked one."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only show the plan (same as `factory plan`)."),
    specs_dir: Path = _SPECS,
    config: Optional[Path] = _CONFIG,
    cloud: str = _CLOUD,
    json_output: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Register AMIs into launch templates, Batch compute environments and job queues, per tier."""
    progress = None if json_output else err
    result = _run("register", task, all_specs, specs_dir, config, ami, dry_run, progress, cloud)
    if json_output:
        print_json(result.to_json())
    else:
        _print_result(result, "factory register" + (" (dry run)" if dry_run else ""))


@app.command("nextflow-config")
@handle_errors
def nextflow_config(
    tasks: Optional[List[str]] = typer.Argument(None, help="Tasks to include (default: every spec)."),
    all_specs: bool = typer.Option(False, "--all", help="Every spec in --specs-dir (the default)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write to FILE (atomically) instead of stdout."),
    check: bool = typer.Option(False, "--check", help="Also check in AWS that each queue is registered."),
    offline: bool = typer.Option(
        False, "--offline",
        help="Choose the tiers from the specs alone, without reading the account: right only while register has not narrowed them "
             "to the account's room nor kept an older queue name (docs/register.md).",
    ),
    specs_dir: Path = _SPECS,
    config: Optional[Path] = _CONFIG,
    cloud: str = _CLOUD,
) -> None:
    """Write a Nextflow config sending each task's process to its tier's job queue (the tiers as register chose them in the account)."""
    from factory.config import load_config
    from factory.nextflow import queue_for_tasks, queues_exist, render_config, write_atomic
    from factory.spec import find_spec, load_specs
    from factory.tiers import tiers_for

    if tasks and all_specs:
        raise UsageError("give TASK names or --all, not both")
    everything = load_specs([specs_dir])
    by_name = {s.name: s for s in everything}
    # A task outside --specs-dir (or a typo) goes through find_spec for its message.
    selected = [by_name.get(t) or find_spec(t, specs_dir) for t in tasks] if tasks else everything
    settings = load_config(config)
    if check and offline:
        raise UsageError("--check reads the account and --offline does not: give one of them")
    if offline:
        tiers, _ = tiers_for(everything, settings.max_tiers)
    else:
        from factory.cloud import Cloud
        from factory.register.tier_choice import tiers_in_account

        where = Cloud.open(cloud)
        tiers, _ = tiers_in_account(everything, settings.max_tiers, where.clients)
    text = render_config(selected, tiers)
    if check:
        # Only the named tasks' queues (queue_for_tasks maps every task of every tier).
        queues = queue_for_tasks(selected, tiers)
        missing = queues_exist(where.clients(selected[0].region), sorted({queues[s.name] for s in selected}))
        if missing:
            from factory.errors import FactoryError

            raise FactoryError(f"job queue(s) {', '.join(missing)} are not registered: run `factory register --all` first")
    if out is None:
        print(text, end="")
    else:
        write_atomic(out, text)
        err(f"wrote {out}")


@app.command()
@handle_errors
def prune(
    keep: Optional[int] = typer.Option(None, "--keep", help="Newest AMIs per task and launch template versions kept (default: config prune.keep, 3)."),
    apply: bool = typer.Option(False, "--apply", help="Really delete (the default is a dry run)."),
    builder_hours: Optional[float] = typer.Option(
        None, "--builder-hours", min=0,
        help="A builder launched longer ago than this was left by a killed bake and is removed (default: config prune.builder_hours, 6). "
             "0 takes every builder, also one a bake runs now.",
    ),
    dry_run: bool = typer.Option(True, "--dry-run/--no-dry-run", help="List only (default). --no-dry-run is the same as --apply."),
    force: bool = typer.Option(
        False, "--force",
        help="Retire a tier whose queue still has jobs now: AWS terminates them (named in the output). "
             "Without it such a queue is disabled and deleted by a later prune once its jobs have ended.",
    ),
    specs_dir: Path = _SPECS,
    config: Optional[Path] = _CONFIG,
    cloud: str = _CLOUD,
    json_output: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Retire tiers no spec uses; delete launch template versions and AMIs nothing uses any more, volumes the grow agent leaked, builders a killed bake left."""
    from factory.cloud import Cloud
    from factory.config import load_config
    from factory.register import prune as prune_core
    from factory.spec import load_specs

    settings = load_config(config)
    keep = keep if keep is not None else settings.prune_keep
    really = apply or not dry_run
    from factory.register.tier_choice import tiers_in_account

    specs = load_specs([specs_dir])
    # Every region a spec is baked in or distributed to (factory.yaml `distribute:`, the spec's).
    copies_to = {s.region: set() for s in specs}
    for s in specs:
        for r in settings.distribution_for(s).targets(s.region):
            copies_to[s.region].add(r)
            copies_to.setdefault(r, set())
    regions = sorted(copies_to)
    where = Cloud.open(cloud)
    # The tiers as register chose them (its recorded room, the queues' names): prune never
    # retires a tier register made because the account lacked room for more.
    in_use = {t.name for t in tiers_in_account(specs, settings.max_tiers, where.clients)[0]} if specs else set()
    hours = builder_hours if builder_hours is not None else settings.prune_builder_hours
    # The copy_to accounts (through their roles): their copies are made from our AMI of the
    # same region, so a copy still pending there keeps it; and each is pruned by the same rules.
    from factory.distribute.other_accounts import copied_into, other_accounts, prune_accounts

    others = other_accounts(specs, settings, where.clients) if specs else []
    results = [
        (region, prune_core(where.clients(region), keep, dry_run=not really, tiers_in_use=in_use, tasks_in_use={s.name for s in specs}, builder_hours=hours,
                            force=force, copy_regions=[where.clients(r) for r in sorted(copies_to[region])] + copied_into(others, settings, region)))
        for region in regions
    ]
    results += prune_accounts(others, settings, keep, dry_run=not really, builder_hours=hours, force=force)
    failed = [c for _, r in results for c in r.failed]
    if json_output:
        print_json({region: r.to_json() for region, r in results})
    else:
        console = stdout_console()
        for region, r in results:
            if not r.changes:
                console.print(f"{region}: nothing to prune (keeping the newest {keep})", highlight=False, markup=False)
            for c in r.changes:
                if c.action == "failed":  # an error: on stderr, and prune went on with the rest
                    err(f"{region}: could not delete {c.resource} {c.name}: {c.reason}")
                    continue
                if c.action == "drain":
                    verb = "would keep, draining," if r.dry_run else "draining"
                else:
                    verb = "kept" if c.action == "unchanged" else "would delete" if r.dry_run else "deleted"
                console.print(f"{region}: {verb} {c.resource} {c.name}: {c.reason}", highlight=False, markup=False)
        if not really and any(r.changes for _, r in results):
            console.print("dry run: pass --apply to delete", highlight=False, markup=False)
    if failed:
        raise typer.Exit(1)
