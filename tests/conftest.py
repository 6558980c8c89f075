"""Shared fixtures: a CLI runner and the repository's paths."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parent.parent
SPECS = REPO / "specs"


@pytest.fixture
def cli():
    """Run `factory ARGS...` in-process; returns the click Result (exit_code, stdout, stderr)."""
    from factory.cli import app

    runner = CliRunner()

    def run(*args: str, **kwargs):
        return runner.invoke(app, [str(a) for a in args], catch_exceptions=False, **kwargs)

    return run


@pytest.fixture(scope="module")
def moto():
    """moto's server on a free loopback port, one per test module; tests talk to it over HTTP."""
    from factory.local.moto_server import MotoServer

    server = MotoServer.start()
    yield server
    server.stop()
