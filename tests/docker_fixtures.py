"""A real Docker engine for the tests that need one, and a small image on it.

The fixtures `docker_engine` (session) and `docker_env` live in conftest.py. The engine DOCKER_HOST (or the default socket) names when one answers, else a private
`dockerd` started under a temporary folder for the session and stopped after it
(factory.local.docker_engine, as the local cloud's build host runs its own). The image is
made with `docker import` from Debian's busybox-static: no registry is needed.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

IMAGE = "factory-measure-test:busybox"


def _missing() -> str | None:
    from factory.local.docker_engine import engine_answers

    if not shutil.which("docker"):
        return "the docker client is not installed (scripts/system-deps.sh installs docker.io)"
    if engine_answers():
        return None
    if os.geteuid() != 0 or not Path("/usr/sbin/dockerd").exists():
        return "no Docker engine answers and none can be started here (needs root and docker.io)"
    if not Path("/bin/busybox").exists():
        return "busybox-static is missing (scripts/system-deps.sh installs it)"
    return None


requires_docker = pytest.mark.skipif(_missing() is not None, reason=_missing() or "")
