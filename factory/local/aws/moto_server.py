"""Start and stop the local cloud's AWS endpoint (moto's server with our layer) on a free loopback port.

Used by the local cloud (`factory local up`) and by the tests, which talk to it over
real HTTP with boto3. The process runs `factory.local.aws.aws_server`: moto's WSGI app with
the rules, paging, faults and call log of `factory.local` around it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from factory.errors import LocalCloudError
from factory.local.procs import free_port, stop_group

# moto accepts any key; these never reach AWS. They are not credentials.
LOCAL_ACCESS_KEY = "testing"
LOCAL_SECRET_KEY = "testing"


# A user's own credentials that would otherwise ride along with moto's dummy keys: a real
# session token (sent with every request), or a profile that makes boto3/Packer read
# ~/.aws instead. They are removed from every environment aimed at the local cloud.
CREDENTIALS_NOT_FOR_MOTO = ("AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE")


def scrub_env(env: dict[str, str]) -> dict[str, str]:
    """`env` without the user's credentials that must never reach moto."""
    return {k: v for k, v in env.items() if k not in CREDENTIALS_NOT_FOR_MOTO}


# How often Packer polls a state on the local cloud (its AWS_POLL_DELAY_SECONDS, read by
# the amazon builder's waiters: AMI available, instance stopped, the encrypted copy done).
# Its default, 15 s between polls, suits AWS, where an AMI copy takes minutes; the local
# cloud's states change within a fraction of a second (an AMI copy is pending for
# rules.Settings.copy_delay, 0.3 s), so a bake would otherwise idle 15 s at its copy. Only
# the polling cadence changes: Packer still sees `pending` and waits for `available`.
PACKER_POLL_DELAY_SECONDS = "1"


def local_env(endpoint: str, region: str) -> dict[str, str]:
    """Environment variables that point boto3, the AWS CLI and Packer at moto."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": LOCAL_ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": LOCAL_SECRET_KEY,
        "AWS_REGION": region,
        "AWS_DEFAULT_REGION": region,
    }


def require_local_extra() -> None:
    """A LocalCloudError naming the install command when moto's server is not installed."""
    import importlib.util

    missing = [m for m in ("moto", "flask", "werkzeug") if importlib.util.find_spec(m) is None]
    if missing:
        raise LocalCloudError(
            f"the local cloud needs moto's server ({', '.join(missing)} not installed): "
            "pip install 'factory[local]' (or `make venv` in a checkout)"
        )


@dataclass
class MotoServer:
    port: int
    pid: int

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    def start(
        cls,
        log_path: Path | None = None,
        port: int | None = None,
        timeout: float = 20.0,
        state_delay: float | None = None,
        page_size: int | None = None,
        snapshot_release_delay: float | None = None,
        ami_trees: Path | None = None,
        docker_host: str | None = None,
        volume_delay: float | None = None,
        rolling_delay: float | None = None,
        copy_delay: float | None = None,
        stale_read: float | None = None,
    ) -> MotoServer:
        """Start the server. `state_delay` (seconds a Batch resource spends CREATING, UPDATING
        or DELETING) and `page_size` default to $FACTORY_LOCAL_STATE_DELAY /
        $FACTORY_LOCAL_PAGE_SIZE, else 1 s and 2 items. Batch jobs run on the Docker engine
        `docker_host` names (a DOCKER_HOST value), else on the one this process's DOCKER_HOST names."""
        require_local_extra()
        port = port or free_port()
        cmd = [sys.executable, "-m", "factory.local.aws.aws_server", "-H", "127.0.0.1", "-p", str(port)]
        if state_delay is not None:
            cmd += ["--state-delay", str(state_delay)]
        if page_size is not None:
            cmd += ["--page-size", str(page_size)]
        if snapshot_release_delay is not None:
            cmd += ["--snapshot-release-delay", str(snapshot_release_delay)]
        if volume_delay is not None:  # seconds a new EBS volume is `creating` (rules.Settings.volume_delay)
            cmd += ["--volume-delay", str(volume_delay)]
        if rolling_delay is not None:  # seconds an infrastructure update stays UPDATING (rules.Settings.rolling_delay)
            cmd += ["--rolling-delay", str(rolling_delay)]
        if copy_delay is not None:  # seconds an AMI copy stays pending (rules.Settings.copy_delay)
            cmd += ["--copy-delay", str(copy_delay)]
        if stale_read is not None:  # seconds of old reads, and of an unchecked AMI parameter (rules.Settings.stale_read)
            cmd += ["--stale-read", str(stale_read)]
        log = open(log_path, "ab") if log_path else subprocess.DEVNULL
        # Anything moto writes (e.g. its request recorder's file) goes beside its log or
        # into the temp folder, never into the user's working directory.
        workdir = log_path.parent if log_path else Path(tempfile.gettempdir())
        env = dict(os.environ, MOTO_RECORDER_FILEPATH=str(workdir / f"moto-recording-{port}"))
        if docker_host is not None:
            env["DOCKER_HOST"] = docker_host
            env.pop("DOCKER_CONTEXT", None)
        if ami_trees is not None:  # DeregisterImage drops the AMI's tree there (factory.local.builder.ami_trees)
            env["FACTORY_LOCAL_AMI_TREES"] = str(ami_trees)
        try:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=workdir, env=env)
        except OSError as exc:
            raise LocalCloudError(f"cannot start moto's server ({exc}); run `make venv` to install it") from None
        finally:
            if log_path:
                log.close()
        server = cls(port=port, pid=proc.pid)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise LocalCloudError(f"moto's server exited at start (status {proc.returncode}); see {log_path}")
            try:
                urllib.request.urlopen(server.endpoint + "/moto-api/", timeout=1).close()
                return server
            except OSError:
                time.sleep(0.1)
        server.stop()
        raise LocalCloudError(f"moto's server did not answer on {server.endpoint} within {timeout:.0f}s")

    def alive(self) -> bool:
        try:
            urllib.request.urlopen(self.endpoint + "/moto-api/", timeout=1).close()
            return True
        except OSError:
            return False

    def calls(self, clear: bool = False) -> list[str]:
        """Every AWS call the server answered so far, as `service:Operation` (oldest first)."""
        return self._calls(clear)["calls"]

    def calls_by(self) -> list[tuple[str, str]]:
        """Every AWS call so far as (caller, `service:Operation`): who made it, as the call log
        names it (`aws_server.caller`: `command:bake`, `packer`, `factory-local`, `other`)."""
        answer = self._calls(False)
        return list(zip(answer["callers"], answer["calls"]))

    def _calls(self, clear: bool) -> dict:
        import json

        req = urllib.request.Request(self.endpoint + "/_factory/calls", method="DELETE" if clear else "GET")
        with urllib.request.urlopen(req, timeout=5) as resp:
            return json.loads(resp.read())

    def reset(self) -> None:
        """Forget every resource (moto's own reset API)."""
        req = urllib.request.Request(self.endpoint + "/moto-api/reset", method="POST")
        urllib.request.urlopen(req, timeout=5).close()

    def stop(self) -> None:
        (Path(tempfile.gettempdir()) / f"moto-recording-{self.port}").unlink(missing_ok=True)
        stop_group(self.pid)
