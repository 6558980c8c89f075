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
        None, "--base-ami", help="Use this base AMI instead of reading the ECS-optimized SSM parameter."
    ),
    specs_dir: Path = typer.Option(DEFAULT_SPECS_DIR, "--specs-dir", help="Where the task specs live."),
    cloud: str = typer.Option("aws", "--cloud", help="Where the base AMI is looked up: aws (your account) or local (`factory local up`)."),
) -> None:
    """Write the Packer template, Ansible roles and variables for a task into one folder."""
    from factory import render as render_mod
    from factory.errors import UsageError
    from factory.sizing import size_task
    from factory.spec import find_spec

    spec = find_spec(task, specs_dir)
    plan = size_task(spec)
    if base_ami is not None and not base_ami.startswith("ami-"):
        raise UsageError(f"--base-ami: {base_ami!r} is not an AMI id (ami-...)")
    if base_ami is None:
        from factory.cloud import Cloud

        base_ami = render_mod.resolve_base_ami(spec, Cloud.open(cloud).clients(spec.region))
    result = render_mod.render(spec, plan, base_ami, out or Path("build") / spec.name)
    print(result.summary())
