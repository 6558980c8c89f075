"""`factory show TASK [--json]`: the task's image manifest and where it stands. Thin over factory.show."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from factory.cli.app import app
from factory.cli.common import DEFAULT_SPECS_DIR, handle_errors, print_json


@app.command()
@handle_errors
def show(
    task: str = typer.Argument(..., help="Task name (specs/<task>.yaml) or a spec file."),
    specs_dir: Path = typer.Option(DEFAULT_SPECS_DIR, "--specs-dir", help="Folder of task specs."),
    build_dir: Path = typer.Option(Path("build"), "--build-dir", help="Where the bakes fetched their image manifests (build/<task>/)."),
    config: Optional[Path] = typer.Option(None, "--config", help="Settings file (default: ./factory.yaml when present); see docs/register.md."),
    cloud: str = typer.Option("aws", "--cloud", help="aws: your AWS account; local: the running local cloud (`factory local up`)."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON document (the whole manifest, every package)."),
) -> None:
    """Show a task's image manifest (what its AMI holds) and where it stands: AMI, launch template, compute environment, queue."""
    from factory import show as core
    from factory.cloud import Cloud
    from factory.spec import find_spec, load_specs

    spec = find_spec(task, specs_dir)
    folder = [spec.path.parent] if spec.path.parent.is_dir() else []
    where = Cloud.open(cloud)
    settings = where.register_config(config)
    status = core.task_status(spec, load_specs(folder), where.clients(spec.region), build_dir, settings.max_tiers)
    if json_output:
        print_json(status.to_json())
    else:
        print(core.text(status))
