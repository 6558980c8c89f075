"""`factory local up|down|status`: the local cloud (moto's server, a throwaway build host, a mirror)."""

from __future__ import annotations

from pathlib import Path

import typer

from factory.cli.app import app
from factory.cli.common import err, handle_errors, print_json

local_app = typer.Typer(
    help="Run the local cloud: moto's server, a throwaway build host and an installer mirror, on loopback.",
    no_args_is_help=True,
)
app.add_typer(local_app, name="local")

_STATE = typer.Option(None, "--state-dir", help="Where the local cloud keeps its state (default .factory/, or $FACTORY_STATE_DIR).")


@local_app.command()
@handle_errors
def up(
    region: str = typer.Option("us-east-1", "--region", help="The region the build host's key pair is imported into first."),
    state_dir: Path | None = _STATE,
    json_out: bool = typer.Option(False, "--json", help="Print where everything runs as JSON."),
) -> None:
    """Start moto's server, the build host and the mirror; record them in the state file."""
    from factory.local import cloud

    lc = cloud.up(state_dir, region)
    if json_out:
        print_json(lc.to_json())
        return
    _describe(lc)
    print("stop it with `factory local down`")


@local_app.command()
@handle_errors
def down(state_dir: Path | None = _STATE) -> None:
    """Stop the local cloud and remove what it made (no process, no mount left)."""
    from factory.local import cloud

    if cloud.down(state_dir):
        print("local cloud stopped")
    else:
        err("no local cloud was running")


@local_app.command()
@handle_errors
def status(
    state_dir: Path | None = _STATE,
    json_out: bool = typer.Option(False, "--json", help="Print the status as JSON."),
) -> None:
    """Say whether the local cloud runs, and where. Exit 1 when it is not running."""
    from factory.local import cloud

    lc = cloud.load(state_dir)
    if lc is None:
        if json_out:
            print_json({"running": False})
        else:
            print("local cloud: not running (start it with `factory local up`)")
        raise typer.Exit(1)
    data = lc.to_json()
    if json_out:
        print_json(data)
    else:
        _describe(lc, data)
    if not data["running"]:
        raise typer.Exit(1)


def _describe(lc, data=None) -> None:
    data = data or lc.to_json()
    state = "running" if data["running"] else "NOT healthy: " + ", ".join(k for k, v in data["alive"].items() if not v) + " down"
    host = data["build_host"]
    print(f"local cloud: {state}")
    print(f"  moto endpoint   {data['endpoint']}  (pid {data['moto_pid']})")
    print(f"  build host      {host['ssh']}  key pair {host['key_pair']}")
    print(f"  installer       {data['mirror']['installer_url']}")
    print(f"  state           {data['state_file']}")
    print("  use it          factory bake TASK --cloud local")
