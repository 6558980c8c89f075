"""`factory plan`, `register`, `nextflow-config`, `prune` (issue 7)."""

import typer

from factory.cli.app import app
from factory.cli.common import handle_errors
from factory.errors import NotReady

_EXTRA = {"allow_extra_args": True, "ignore_unknown_options": True}


@app.command(context_settings=_EXTRA)
@handle_errors
def plan(ctx: typer.Context) -> None:
    """Show what `register` would create, change or leave alone (not built yet)."""
    raise NotReady("`factory plan` is not built yet (issue 7)")


@app.command(context_settings=_EXTRA)
@handle_errors
def register(ctx: typer.Context) -> None:
    """Register AMIs into launch templates, compute environments and job queues (not built yet)."""
    raise NotReady("`factory register` is not built yet (issue 7)")


@app.command("nextflow-config", context_settings=_EXTRA)
@handle_errors
def nextflow_config(ctx: typer.Context) -> None:
    """Write a Nextflow config sending each task to its queue (not built yet)."""
    raise NotReady("`factory nextflow-config` is not built yet (issue 7)")


@app.command(context_settings=_EXTRA)
@handle_errors
def prune(ctx: typer.Context) -> None:
    """Deregister AMIs and launch template versions nothing uses any more (not built yet)."""
    raise NotReady("`factory prune` is not built yet")
