"""`factory render`: write a self-contained Packer folder for a task (issue 5)."""

import typer

from factory.cli.app import app
from factory.cli.common import handle_errors
from factory.errors import NotReady


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@handle_errors
def render(ctx: typer.Context) -> None:
    """Write the Packer template and variables for a task into build/TASK (not built yet)."""
    raise NotReady("`factory render` is not built yet (issue 5)")
