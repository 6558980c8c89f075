"""`factory local up|down|status`: the local cloud (issue 6)."""

import typer

from factory.cli.app import app
from factory.cli.common import handle_errors
from factory.errors import NotReady

local_app = typer.Typer(help="Run the local cloud: moto's server and a throwaway build host (not built yet).", no_args_is_help=True)
app.add_typer(local_app, name="local")


@local_app.command()
@handle_errors
def up() -> None:
    """Start moto's server and the build host (not built yet)."""
    raise NotReady("`factory local up` is not built yet (issue 6)")


@local_app.command()
@handle_errors
def down() -> None:
    """Stop the local cloud and remove what it made (not built yet)."""
    raise NotReady("`factory local down` is not built yet (issue 6)")


@local_app.command()
@handle_errors
def status() -> None:
    """Say whether the local cloud runs, and where (not built yet)."""
    raise NotReady("`factory local status` is not built yet (issue 6)")
