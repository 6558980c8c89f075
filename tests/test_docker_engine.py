"""A private Docker engine (factory.local.docker_engine) under a state folder deeper than a
unix socket's path can be: its sockets go in a short folder of their own, and go with it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from factory.local.docker_engine import DOCKERD, SOCKET_LINKS, UNIX_PATH_MAX, DockerEngine

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not Path(DOCKERD).exists(), reason="starting dockerd needs root and docker.io")


def test_an_engine_under_a_deep_state_dir_answers_and_leaves_nothing(tmp_path):
    deep = tmp_path / ("a-folder-name-that-makes-the-path-long-" * 2) / "engine"
    assert len(str(deep / "docker.sock")) > UNIX_PATH_MAX  # too long for the socket itself
    engine = DockerEngine.start(deep)
    try:
        assert engine.runtime_dir is not None and engine.runtime_dir.parent == SOCKET_LINKS
        assert engine.host == f"unix://{engine.runtime_dir / 'docker.sock'}"
        version = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"], env=engine.env(),
                                 capture_output=True, text=True, timeout=60, check=False)
        assert version.returncode == 0 and version.stdout.strip(), version.stderr
        assert (deep / "data").is_dir()  # the data root stays under the state folder
    finally:
        engine.stop()
    assert not engine.runtime_dir.exists() and not deep.exists()


def test_an_engine_under_a_short_state_dir_keeps_everything_there(tmp_path):
    short = Path("/tmp") / f"fe-{os.getpid()}"
    engine = DockerEngine.start(short)
    try:
        assert engine.runtime_dir is None and engine.host == f"unix://{short / 'docker.sock'}"
    finally:
        engine.stop()
    assert not short.exists()
