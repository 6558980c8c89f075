"""`factory lock`: resolve the base AMIs the specs use into the lock file (factory.base_lock).

Only options and output live here; the work is `factory.base_lock`.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from factory.cli.app import app
from factory.cli.common import DEFAULT_SPECS_DIR, err, handle_errors, print_json


@app.command()
@handle_errors
def lock(
    update: bool = typer.Option(False, "--update", help="Resolve every base again (what AWS recommends now) and print what moved."),
    regions: Optional[List[str]] = typer.Option(None, "--region", help="Lock the bases in this region too (repeat): where the images are distributed."),
    specs_dir: Path = typer.Option(DEFAULT_SPECS_DIR, "--specs-dir", help="Folder of task specs."),
    config: Optional[Path] = typer.Option(
        None, "--config", help="Settings file (default: ./factory.yaml when present): each spec's distribute: regions are locked too."),
    lock_path: Optional[Path] = typer.Option(
        None, "--lock", help="The lock file (default: ./factory.lock; with --cloud local, the local cloud's .factory/factory.lock)."),
    cloud: str = typer.Option("aws", "--cloud", help="aws: your AWS account; local: the running local cloud (`factory local up`)."),
    json_output: bool = typer.Option(False, "--json", help="Print what moved as JSON."),
) -> None:
    """Write the lock of base AMIs: per base its SSM parameter, image name, fields and image id per region.

    Without --update, bases already locked are kept and only missing ones resolved; bases no spec uses are dropped."""
    from factory import base_lock
    from factory.cloud import Cloud
    from factory.spec import load_specs

    if not specs_dir.is_dir():
        from factory.errors import UsageError

        raise UsageError(f"no specs folder at {specs_dir}; run from the repository root or pass --specs-dir")
    specs = load_specs([specs_dir])
    where = Cloud.open(cloud)
    held = base_lock.load(lock_path or base_lock.default_path(where))
    from factory.config import load_config

    settings = load_config(config)
    # where each spec's image is distributed: a refused distribution is a ConfigError here
    more = {s.name: settings.distribution_for(s).targets(s.region) for s in specs}
    changes = base_lock.lock_bases(specs, where, held, update=update, regions=regions or (), more=more)
    dropped = base_lock.prune_unused(specs, held, regions or (), more)
    write = held.changed or not held.path.exists()
    if write:
        held.save()
    if json_output:
        print_json({"lock": str(held.path), "written": write, "changes": [vars(c) for c in changes], "dropped": dropped})
        return
    for c in changes:
        print(c.text())
    for d in dropped:
        print(f"{d}: dropped (no spec uses it)")
    if write:
        err(f"wrote {held.path}")
    else:
        err(f"{held.path}: every base is locked{'; AWS recommends nothing newer' if update else ''}")
