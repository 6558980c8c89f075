"""`factory distribute [TASK | --all] [--ami AMI]`: copy and share each task's AMI as
factory.yaml's `distribute:` (and the spec's) says. Thin over factory.distribute.

A bake distributes by itself; this command finishes what a failed or killed one left, or
distributes again after the settings changed."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from factory.cli.app import app
from factory.cli.common import DEFAULT_SPECS_DIR, err, handle_errors, print_json, stdout_console
from factory.errors import FactoryError, UsageError


@app.command()
@handle_errors
def distribute(
    task: Optional[str] = typer.Argument(None, help="Task name (specs/<task>.yaml) or a spec file."),
    all_specs: bool = typer.Option(False, "--all", help="Every spec in --specs-dir."),
    ami: Optional[str] = typer.Option(None, "--ami", help="Distribute this AMI (default: the task's newest)."),
    specs_dir: Path = typer.Option(DEFAULT_SPECS_DIR, "--specs-dir", help="Folder of task specs."),
    config: Optional[Path] = typer.Option(None, "--config", help="Settings file (default: ./factory.yaml when present); see docs/register.md."),
    cloud: str = typer.Option("aws", "--cloud", help="aws: your AWS account; local: the running local cloud (`factory local up`)."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
    register: bool = typer.Option(False, "--register", help="Also register each copy in its region (launch template, compute environment, queue, parameter)."),
) -> None:
    """Copy each task's AMI to the regions and accounts of its distribution and share it."""
    from factory.cloud import Cloud
    from factory.config import load_config
    from factory.distribute.run import distribute_tasks
    from factory.spec import find_spec, load_specs

    if bool(task) == bool(all_specs):
        raise UsageError(f"give a TASK or --all, not {'both' if task else 'neither'} (e.g. factory distribute salmon-quant)")
    if ami and not task:
        raise UsageError("--ami goes with one TASK (e.g. factory distribute salmon-quant --ami ami-0123...)")
    if ami and not ami.startswith("ami-"):
        raise UsageError(f"--ami {ami!r} is not an AMI id (ami-...)")
    specs = [find_spec(task, specs_dir)] if task else load_specs([specs_dir])
    settings = load_config(config)
    where = Cloud.open(cloud)
    where.config_path = config
    if register:  # before any copy: every region the copies are registered in has a network
        from factory.distribute.networks import check_networks

        for spec in specs:
            check_networks(where.clients, spec, settings.distribution_for(spec), settings.source)
    results = distribute_tasks(specs, where, settings, ami=ami, on_step=lambda text: err(text))
    registered = {}
    if register:
        from factory.distribute.registration import register_copies

        copies = {r.task: {k: v for k, v in r.ami_by_region().items() if k != r.home} for r in results}
        registered = register_copies(specs, copies, where.clients, settings, image_target_for=where.image_target, progress=lambda text: err(text))
        from factory.distribute.run import register_in_accounts

        pool = {s.name: s for s in specs}
        for r in results:  # copy_to accounts marked `register: true`
            for account, regions in register_in_accounts(r, pool[r.task], settings, progress=lambda text: err(text)).items():
                for region, reg in regions.items():
                    registered[f"{account}:{region}"] = reg
    if json_out:
        print_json([{**r.to_json(), "registered": {region: reg.to_json() for region, reg in registered.items()
                                                   if r.task in {t for tier in reg.tiers for t in tier.tasks}}} for r in results])
    else:
        console = stdout_console()
        for r in results:
            if not r.copies:
                console.print(f"{r.task}: no distribution (factory.yaml `distribute:` and the spec name none)", highlight=False, markup=False)
            for c in r.copies:
                what = c.error or ", ".join(c.notes)
                console.print(f"{r.task} {c.region}{' ' + c.account if c.account else ''}: {c.ami_id or '-'} {c.status} {what}",
                              highlight=False, markup=False)
    failed = [e for r in results for e in r.errors]
    if failed:
        raise FactoryError("distribution failed: " + "; ".join(failed) + "; run the same command again to finish")
