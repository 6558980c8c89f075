"""`factory render`: write a self-contained Packer folder for a task (issue 5)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from factory.cli.app import app
from factory.cli.common import DEFAULT_SPECS_DIR, handle_errors


@app.command()
@handle_errors
def render(
    task: str = typer.Argument(..., help="The task to render (specs/TASK.yaml)."),
    out: Optional[Path] = typer.Option(None, "--out", help="The folder to write (default build/TASK)."),
    base_ami: Optional[str] = typer.Option(
        None, "--base-ami", help="Use this base AMI instead of the lock's (factory.lock; a base it lacks: what AWS recommends now)."
    ),
    specs_dir: Path = typer.Option(DEFAULT_SPECS_DIR, "--specs-dir", help="Where the task specs live."),
    cloud: str = typer.Option("aws", "--cloud", help="Where the bake would run: aws (your account) or local (`factory local up`)."),
    config: Optional[Path] = typer.Option(
        None, "--config", help="Settings file (default: ./factory.yaml when present): its builder section, as `factory bake` uses it."),
) -> None:
    """Write the Packer template, Ansible roles and variables for a task into one folder:
    the folder `factory bake` would build, with factory.yaml's builder settings."""
    from dataclasses import replace

    from factory import render as render_mod
    from factory.cloud import Cloud
    from factory.config import load_config
    from factory.errors import UsageError
    from factory.sizing import size_task
    from factory.spec import find_spec

    spec = find_spec(task, specs_dir)
    plan = size_task(spec)
    if base_ami is not None and not base_ami.startswith("ami-"):
        raise UsageError(f"--base-ami: {base_ami!r} is not an AMI id (ami-...)")
    load_config(config)  # a wrong settings file stops here, as in `factory bake`
    where = Cloud.open(cloud)
    where = replace(where, config_path=config)
    if base_ami is None:  # the lock's (read, never written here), else what AWS recommends now
        from factory import base_lock
        from factory.bake.build import base_ami_for

        base_ami = base_ami_for(spec, where, base_lock.load(base_lock.default_path(where)))
    result = render_mod.render(spec, plan, base_ami, out or Path("build") / spec.name, target=where.target(spec.region))
    print(result.summary())
