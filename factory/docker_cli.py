"""The docker client as a subprocess: the one place factory talks to a Docker engine from this machine.

Why the CLI and not the Docker SDK for Python: `docker cp` streams a file or a folder
into a container as a tar without our code building one; the client honours DOCKER_HOST,
`docker context` and its config exactly as the user's own `docker` commands do; and it
is already a system dependency (Debian's docker.io), so nothing is added to the Python
dependencies. Each call is a process (~10-20 ms), which no measurement here notices:
the disk samples themselves never call Docker (see factory/disk_sampler.py).

Every failure becomes a `DockerError` whose message names the fix: no client, no engine
answering, no permission on its socket, no such image.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from typing import Any, Mapping, Sequence

from factory.errors import DockerError

_NO_ENGINE = ("Cannot connect to the Docker daemon", "error during connect", "Is the docker daemon running")


def engine_name(env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    return env.get("DOCKER_HOST") or (f"context {env['DOCKER_CONTEXT']}" if env.get("DOCKER_CONTEXT") else "the default socket")


class DockerCli:
    """Runs `docker ...` with `env` (DOCKER_HOST etc.; this process's environment by default)."""

    def __init__(self, env: Mapping[str, str] | None = None):
        self.env = dict(os.environ if env is None else env)
        if not shutil.which("docker", path=self.env.get("PATH")):
            raise DockerError("the docker client is not installed: apt-get install docker.io (or install Docker) and try again")

    @property
    def where(self) -> str:
        return engine_name(self.env)

    def run(self, *args: str, timeout: float | None = 120.0, check: bool = True, new_session: bool = False) -> subprocess.CompletedProcess:
        """Run `docker ARGS`; a failure raises DockerError with docker's own message and the fix where known."""
        try:
            proc = subprocess.run(
                ["docker", *args], env=self.env, capture_output=True, text=True, timeout=timeout,
                stdin=subprocess.DEVNULL, start_new_session=new_session,
            )
        except subprocess.TimeoutExpired:
            raise DockerError(f"`docker {' '.join(args[:2])}` did not answer within {timeout:.0f}s ({self.where}); is the engine overloaded?") from None
        if check and proc.returncode != 0:
            raise self.error(args, proc.stderr)
        return proc

    def error(self, args: Sequence[str], stderr: str) -> DockerError:
        text = " ".join(stderr.split())
        if any(s in text for s in _NO_ENGINE):
            return DockerError(
                f"no Docker engine answers at {self.where}: start one (`dockerd`, or `systemctl start docker`) "
                "or set DOCKER_HOST to an engine that runs"
            )
        if "permission denied while trying to connect" in text:
            return DockerError(f"permission denied on the Docker socket ({self.where}): run as root or join the `docker` group")
        return DockerError(f"`docker {' '.join(args[:2])}` failed: {text or 'no message'}")

    def ping(self) -> str:
        """The engine's version; DockerError naming the fix when none answers."""
        return self.run("version", "--format", "{{.Server.Version}}", timeout=30).stdout.strip()

    def inspect(self, kind: str, name: str, *extra: str) -> dict[str, Any] | None:
        """`docker KIND inspect NAME` as a dict, or None when there is no such object."""
        proc = self.run(kind, "inspect", *extra, name, check=False)
        if proc.returncode != 0:
            if "No such" in proc.stderr or "no such" in proc.stderr:
                return None
            raise self.error((kind, "inspect"), proc.stderr)
        data = json.loads(proc.stdout)
        return data[0] if data else None

    def remove_container(self, name: str) -> None:
        """`docker rm -f -v NAME`: the container, its writable layer and its anonymous volumes; gone already is fine.

        Runs in its own session so a second Ctrl-C at the terminal cannot cut the clean-up short.
        """
        proc = self.run("rm", "--force", "--volumes", name, check=False, new_session=True, timeout=120)
        if proc.returncode != 0 and "No such container" not in proc.stderr:
            raise self.error(("rm", name), proc.stderr)

    def containers(self, label: str) -> list[dict[str, str]]:
        """Every container (running or not) with `label`, as `docker ps`'s JSON lines."""
        out = self.run("ps", "--all", "--no-trunc", "--filter", f"label={label}", "--format", "{{json .}}").stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]
