"""`factory bake`: validate, size, render, bake with Packer, register (issue 6)."""

import typer

from factory.cli.app import app
from factory.cli.common import handle_errors
from factory.errors import NotReady


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@handle_errors
def bake(ctx: typer.Context) -> None:
    """Bake a task's AMI with Packer and Ansible, reusing an identical one (not built yet)."""
    raise NotReady("`factory bake` is not built yet (issue 6)")
