"""`factory size`: storage sizing (issue 4)."""

import typer

from factory.cli.app import app
from factory.cli.common import handle_errors
from factory.errors import NotReady


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@handle_errors
def size(ctx: typer.Context) -> None:
    """Size EBS and Docker storage for a task from its benchmarks (not built yet)."""
    raise NotReady("`factory size` is not built yet (issue 4)")
