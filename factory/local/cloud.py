"""The local cloud: everything a bake needs, on loopback, with no AWS account.

Three parts, each its own module, composed here:

- moto's server (`moto_server.MotoServer`) on a free loopback port: EC2, SSM, IAM, Batch;
- a throwaway build host (`buildhost.BuildHost`): sshd on loopback and a real Docker
  engine inside a private overlay root, whose public key is imported into moto as an EC2
  key pair, so Packer "launches" an instance in moto and really provisions this host;
- a mirror (`mirror.Mirror`) serving a stand-in Miniconda installer and its sha256 on
  loopback, since the real download site cannot be reached here.

`up()` starts them and writes a state file (`<state_dir>/local-cloud.json`, default
`.factory/`), so separate CLI invocations (`factory local status`, `factory bake --cloud
local`, `factory local down`) find the same cloud. The file holds ports, pids and paths
only: no secret except the *path* of the throwaway private key, which lives in the
build host's own throwaway directory and is removed by `down()`.

`down()` stops all three and removes their directories: no process and no mount is left
(the build host's namespaces end with its init).

`using_local_cloud()` is what `factory bake --cloud local` uses: the running cloud if
there is one, else one started for the bake and stopped after it.

Parallel bakes (`factory bake --all --jobs N`): one build host per job, as AWS gives each
build its own instance. The first host is started by `up()`; `ensure_build_hosts(N)`
starts the others (`<state_dir>/buildhosts/<n>/`, each with its own key pair
`factory-local-buildhost-<n>`), which run until `down()`. `builder()` lends a build
host to one build at a time, across processes too (a lent host's lock file is held, so
two `factory bake` processes on one local cloud take turns), relaunched first when an
earlier build used it, so every bake starts from a new builder as on AWS
(`BuildHost.relaunch`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from factory.errors import LocalCloudError
from factory.local.aws.moto_server import (
    LOCAL_ACCESS_KEY,
    LOCAL_SECRET_KEY,
    MotoServer,
    local_env,
)

STATE_FILE = "local-cloud.json"
KEY_PAIR_NAME = "factory-local-buildhost"
INSTANCE_ROLE = "ecsInstanceRole"
# A regular (non service-linked) Batch service role, as older accounts have: name it in
# factory.yaml (`batch.service_role`) to rehearse the blue/green replacement path. Without
# it, the local cloud uses Batch's service-linked role, as AWS does (docs/local-cloud.md).
BATCH_SERVICE_ROLE = "AWSBatchServiceRole"
DEFAULT_REGION = "us-east-1"
EXTRA_HOSTS_DIR = "buildhosts"  # <state_dir>/buildhosts/<n>/: the build hosts of parallel bakes
BUILDER_LOCK = "builder.lock"  # in a build host's folder: held by the build it is lent to


def default_state_dir() -> Path:
    """`$FACTORY_STATE_DIR`, else `.factory/` in the current directory."""
    return Path(os.environ.get("FACTORY_STATE_DIR") or ".factory").absolute()


@dataclass
class LocalCloud:
    state_dir: Path
    region: str
    moto: MotoServer
    host: Any  # factory.local.builder.buildhost.BuildHost
    mirror: Any  # factory.local.builder.mirror.Mirror
    started_at: str
    extra_hosts: list[Any] = field(default_factory=list)  # build hosts 1.. of parallel bakes
    _clients: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    _lent: set[int] = field(default_factory=set, repr=False, compare=False)  # indexes of hosts building now
    _lending: threading.Condition = field(default_factory=threading.Condition, repr=False, compare=False)
    _importing: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)  # boto3 makes clients unsafely across threads

    # -- where things are ------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        return self.moto.endpoint

    @property
    def state_file(self) -> Path:
        return self.state_dir / STATE_FILE

    def env(self, region: str | None = None) -> dict[str, str]:
        """Environment variables pointing boto3, the AWS CLI and Packer at moto. Merge them
        into an environment scrubbed of the user's session token and profile
        (`moto_server.scrub_env`), as `Cloud.packer_env` does."""
        return local_env(self.endpoint, region or self.region)

    def clients(self, region: str | None = None):
        """boto3 clients for moto's server (credentials are moto's dummies, not secrets),
        made once per region."""
        region = region or self.region
        if region not in self._clients:
            self._clients[region] = self._make_clients(region)
        return self._clients[region]

    def _make_clients(self, region: str):
        from factory.aws import Clients

        clients = Clients(region=region, endpoint_url=self.endpoint)
        import boto3
        import botocore.session

        # Nothing of the user's own AWS set-up: not their AWS_PROFILE (a profile missing
        # here would fail, one present could add a session token or a credential process)
        # nor their ~/.aws files; moto's dummy keys only.
        config = self.state_dir / "aws-config"
        if not config.is_file():
            config.parent.mkdir(parents=True, exist_ok=True)
            config.write_text("# the local cloud's AWS config: one empty profile, moto's keys come from factory\n[default]\n")
        core = botocore.session.Session()
        core.set_config_variable("profile", "default")
        core.set_config_variable("config_file", str(config))
        core.set_config_variable("credentials_file", os.devnull)
        clients._session = boto3.session.Session(
            aws_access_key_id=LOCAL_ACCESS_KEY,
            aws_secret_access_key=LOCAL_SECRET_KEY,
            region_name=region,
            botocore_session=core,
        )
        return clients

    def setup_clients(self, region: str | None = None):
        """Clients for the local cloud's own set-up (key pair, IAM seed): marked `factory-local`,
        so the call log tells them from what factory does on a user's account."""
        from factory.aws import Clients

        made = self.clients(region)
        setup = Clients(region=made.region, endpoint_url=made.endpoint_url, agent="factory-local")
        setup._session = made._session
        return setup

    @property
    def hosts(self) -> list[Any]:
        """Every build host: the first (`host`), then those of parallel bakes."""
        return [self.host, *self.extra_hosts]

    @staticmethod
    def key_pair_name(index: int) -> str:
        """The EC2 key pair holding build host `index`'s public key."""
        return KEY_PAIR_NAME if index == 0 else f"{KEY_PAIR_NAME}-{index}"

    def ensure_key_pair(self, region: str, index: int = 0) -> str:
        """Import build host `index`'s public key into moto in `region` (once per region)."""
        from factory.aws import aws_errors

        name = self.key_pair_name(index)
        with self._importing:
            ec2 = self.setup_clients(region).ec2()
        with aws_errors(f"importing the build host's key into the local cloud ({region})"):
            names = {k["KeyName"] for k in ec2.describe_key_pairs().get("KeyPairs", [])}  # DescribeKeyPairs has no MaxResults: one answer
            if name not in names:
                ec2.import_key_pair(KeyName=name, PublicKeyMaterial=self.hosts[index].public_key.encode())
        return name

    def ensure_build_hosts(self, count: int) -> None:
        """At least `count` build hosts running (one per parallel bake); the new ones are
        recorded in the state file, so `down()` stops them."""
        from factory.local.builder.buildhost import BuildHost

        with _locked(self.state_dir):
            for n, host in enumerate(self.extra_hosts[:max(0, count - 1)], start=1):
                if not host.alive():  # stopped by hand or by a reboot: start it again
                    host.stop(remove=True)
                    self.extra_hosts[n - 1] = BuildHost.start(self.state_dir / EXTRA_HOSTS_DIR / str(n))
                    self._save()
            while len(self.hosts) < count:
                index = len(self.hosts)
                self.extra_hosts.append(BuildHost.start(self.state_dir / EXTRA_HOSTS_DIR / str(index)))
                self._save()

    @contextlib.contextmanager
    def builder(self) -> Iterator[tuple[int, Any]]:
        """Lend a free build host to one build, as a new builder instance: one no build has
        used yet, else relaunched (`BuildHost.relaunch`: nothing an earlier bake wrote stays).
        Yields (its index, the host). Waits while every host is building, in this process or
        another (`factory bake` processes on one local cloud take turns: each lent host is
        locked, `BUILDER_LOCK` in its folder). The first free host is lent first, so a lone
        bake always builds on `host`."""
        index, lock = self._take_free_host()
        try:
            host = self.hosts[index]
            if not host.is_fresh():
                host.relaunch()
            host.take()
            yield index, host
        finally:
            lock.close()  # releases the flock
            with self._lending:
                self._lent.discard(index)
                self._lending.notify_all()

    def _take_free_host(self) -> tuple[int, Any]:
        """(index, its open lock file) of a host no build holds: not lent in this process, and
        its lock free (another process's build holds it otherwise). Waits for one."""
        with self._lending:
            while True:
                for index, host in enumerate(self.hosts):
                    if index in self._lent:
                        continue
                    if not hasattr(host, "relaunch"):
                        raise LocalCloudError(f"the build host in {host.state_dir} is gone: run `factory local down`, then `factory local up`")
                    lock = open(Path(host.state_dir) / BUILDER_LOCK, "a")
                    try:
                        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        lock.close()
                        continue
                    self._lent.add(index)
                    return index, lock
                self._lending.wait(timeout=0.5)  # a build of this process ends, or another process's is polled again

    def seed_account(self) -> None:
        """What a real account set up for AWS Batch already has: the `ecsInstanceRole`
        instance profile (AWS Batch's default for the instances it launches) and an older
        Batch service role (`AWSBatchServiceRole`), used only when factory.yaml names it."""
        import json as _json

        from botocore.exceptions import ClientError

        from factory.aws import aws_errors, error_code

        iam = self.setup_clients(self.region).client("iam")

        def trust(service: str) -> str:
            return _json.dumps({
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}],
            })

        with aws_errors("setting up the local cloud's IAM (ecsInstanceRole)"):
            for call, kwargs in (
                (iam.create_role, {"RoleName": INSTANCE_ROLE, "AssumeRolePolicyDocument": trust("ec2.amazonaws.com")}),
                (iam.create_role, {"RoleName": BATCH_SERVICE_ROLE, "AssumeRolePolicyDocument": trust("batch.amazonaws.com")}),
                (iam.create_instance_profile, {"InstanceProfileName": INSTANCE_ROLE}),
                (iam.add_role_to_instance_profile, {"InstanceProfileName": INSTANCE_ROLE, "RoleName": INSTANCE_ROLE}),
            ):
                try:
                    call(**kwargs)
                except ClientError as exc:
                    if error_code(exc) not in ("EntityAlreadyExists", "LimitExceeded"):
                        raise

    def build_target(self, region: str | None = None, *, import_key: bool = True, index: int = 0):
        """The render step's BuildTarget for this cloud: endpoint, SSH, key, mirror, on build
        host `index` (`import_key=False`: without importing the key pair, for reads such as a hash)."""
        from factory.render import BuildTarget

        region = region or self.region
        host = self.hosts[index]
        if import_key:
            self.ensure_key_pair(region, index)
        return BuildTarget.local(
            endpoint=self.endpoint,
            ssh_host=host.ssh_host,
            ssh_port=host.ssh_port,
            ssh_username=host.ssh_user,
            keypair_name=self.key_pair_name(index),
            private_key_file=str(host.private_key_file),
            installer_url=self.mirror.installer_url,
            installer_sha256=self.mirror.installer_sha256,
            python_interpreter=host.python_interpreter,
        )

    # -- state -----------------------------------------------------------------------

    def alive(self) -> dict[str, bool]:
        return {
            "moto": self.moto.alive(),
            "build_host": bool(self.host.alive()),
            "mirror": bool(self.mirror.alive()),
        }

    def to_json(self) -> dict[str, Any]:
        alive = self.alive()
        return {
            "running": all(alive.values()),
            "alive": alive,
            "state_file": str(self.state_file),
            "region": self.region,
            "endpoint": self.endpoint,
            "moto_pid": self.moto.pid,
            "build_host": {
                "ssh": f"{self.host.ssh_user}@{self.host.ssh_host}:{self.host.ssh_port}",
                "state_dir": str(self.host.state_dir),
                "private_key_file": str(self.host.private_key_file),
                "key_pair": KEY_PAIR_NAME,
                "python_interpreter": self.host.python_interpreter,
            },
            "mirror": {"installer_url": self.mirror.installer_url, "installer_sha256": self.mirror.installer_sha256},
            "started_at": self.started_at,
        }

    def _save(self) -> None:
        data = {
            "version": 1,
            "region": self.region,
            "moto": {"port": self.moto.port, "pid": self.moto.pid},
            "build_host_dir": str(self.host.state_dir),
            "extra_build_host_dirs": [str(h.state_dir) for h in self.extra_hosts],
            "mirror_dir": str(self.mirror.directory),
            "started_at": self.started_at,
        }
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        os.chmod(tmp, 0o600)
        tmp.replace(self.state_file)


# -- life cycle ----------------------------------------------------------------------


def up(state_dir: Path | None = None, region: str = DEFAULT_REGION, state_delay: float | None = None, page_size: int | None = None) -> LocalCloud:
    """Start the local cloud. A LocalCloudError when one already runs from `state_dir`.
    `state_delay` and `page_size` tune the AWS rules (factory.local.aws.aws_server)."""
    state_dir = Path(state_dir or default_state_dir()).absolute()
    state_dir.mkdir(parents=True, exist_ok=True)
    with _locked(state_dir):
        existing = _load(state_dir)
        if existing is not None:
            if all(existing.alive().values()):
                raise LocalCloudError(
                    f"the local cloud already runs ({existing.endpoint}, state in {existing.state_file}); "
                    "`factory local down` stops it"
                )
            _stop(existing)  # half-dead leftovers of a crashed run
        return _start(state_dir, region, state_delay, page_size)


def down(state_dir: Path | None = None) -> bool:
    """Stop the local cloud and remove what it made. False when none was running."""
    state_dir = Path(state_dir or default_state_dir()).absolute()
    with _locked(state_dir):
        cloud = _load(state_dir)
        if cloud is None:
            return False
        _stop(cloud)
        return True


def load(state_dir: Path | None = None) -> LocalCloud | None:
    """The cloud recorded in `state_dir` (running or not), or None."""
    return _load(Path(state_dir or default_state_dir()).absolute())


def running(state_dir: Path | None = None) -> LocalCloud:
    """The running local cloud, or a LocalCloudError saying how to start one."""
    cloud = load(state_dir)
    if cloud is None:
        raise LocalCloudError("no local cloud is running: start one with `factory local up`")
    alive = cloud.alive()
    if not all(alive.values()):
        dead = ", ".join(k for k, v in alive.items() if not v)
        raise LocalCloudError(
            f"the local cloud in {cloud.state_file} is not healthy ({dead} not answering): "
            "`factory local down` then `factory local up`"
        )
    return cloud


@contextlib.contextmanager
def using_local_cloud(state_dir: Path | None = None, region: str = DEFAULT_REGION) -> Iterator[tuple[LocalCloud, bool]]:
    """The running local cloud, or one started now and stopped on exit. Yields (cloud, started)."""
    state_dir = Path(state_dir or default_state_dir()).absolute()
    cloud = load(state_dir)
    if cloud is not None and all(cloud.alive().values()):
        yield cloud, False
        return
    cloud = up(state_dir, region)
    try:
        yield cloud, True
    finally:
        down(state_dir)


# -- internals -----------------------------------------------------------------------


@contextlib.contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    state_dir.mkdir(parents=True, exist_ok=True)
    with open(state_dir / "local-cloud.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _start(state_dir: Path, region: str, state_delay: float | None = None, page_size: int | None = None) -> LocalCloud:
    from factory.local.builder.buildhost import BuildHost
    from factory.local.builder.mirror import Mirror

    moto = host = mirror = None
    try:
        moto = MotoServer.start(log_path=state_dir / "moto.log", state_delay=state_delay, page_size=page_size, ami_trees=state_dir)
        # The mirror first: it fills the stand-in conda's package cache, which the build
        # host's root (an overlay over this machine's /) then sees from its start.
        mirror = Mirror.start(state_dir / "mirror")
        host = BuildHost.start(state_dir / "buildhost")
        cloud = LocalCloud(
            state_dir=state_dir,
            region=region,
            moto=moto,
            host=host,
            mirror=mirror,
            started_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        )
        cloud.ensure_key_pair(region)
        cloud.seed_account()
        cloud._save()
        return cloud
    except BaseException:
        if mirror is not None:
            with contextlib.suppress(Exception):
                _stop_mirror(mirror)
        if host is not None:
            with contextlib.suppress(Exception):
                host.stop(remove=True)
        if moto is not None:
            moto.stop()
        raise


def _load(state_dir: Path) -> LocalCloud | None:
    f = state_dir / STATE_FILE
    if not f.exists():
        return None
    from factory.local.builder.buildhost import BuildHost
    from factory.local.builder.mirror import Mirror

    try:
        data = json.loads(f.read_text())
        moto = MotoServer(port=int(data["moto"]["port"]), pid=int(data["moto"]["pid"]))
        host_dir, mirror_dir = Path(data["build_host_dir"]), Path(data["mirror_dir"])
        extra_dirs = [Path(d) for d in data.get("extra_build_host_dirs", [])]
    except (ValueError, KeyError, TypeError) as exc:
        raise LocalCloudError(f"{f} is damaged ({exc}); stop what runs and delete it") from None
    host = BuildHost.load(host_dir) or _Gone(host_dir)
    mirror = Mirror.load(mirror_dir) or _Gone(mirror_dir)
    return LocalCloud(
        state_dir=state_dir,
        region=data.get("region", DEFAULT_REGION),
        moto=moto,
        host=host,
        mirror=mirror,
        started_at=data.get("started_at", ""),
        extra_hosts=[BuildHost.load(d) or _Gone(d) for d in extra_dirs],
    )


def _stop(cloud: LocalCloud) -> None:
    problems = []
    stops = [("mirror", lambda: _stop_mirror(cloud.mirror))]
    stops += [(f"build host {h.state_dir}", lambda h=h: h.stop(remove=True)) for h in cloud.hosts]
    for name, stop in stops:
        try:
            stop()
        except Exception as exc:  # keep stopping the rest
            problems.append(f"{name}: {exc}")
    if cloud.extra_hosts:
        import shutil

        shutil.rmtree(cloud.state_dir / EXTRA_HOSTS_DIR, ignore_errors=True)
    cloud.moto.stop()  # waits until it is gone (procs.stop_group)
    cloud.state_file.unlink(missing_ok=True)
    (cloud.state_dir / "moto.log").unlink(missing_ok=True)
    import shutil

    from factory.local.builder.ami_trees import AmiTrees

    shutil.rmtree(AmiTrees(cloud.state_dir).root, ignore_errors=True)  # moto's AMIs went with it
    leftovers = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()
                 if str(cloud.state_dir) in line.split()[1]]
    if leftovers:
        problems.append("mounts left: " + ", ".join(leftovers))
    if problems:
        raise LocalCloudError("the local cloud did not stop cleanly: " + "; ".join(problems))


def _stop_mirror(mirror: Any) -> None:
    import shutil

    mirror.stop()
    shutil.rmtree(mirror.directory, ignore_errors=True)


class _Gone:
    """A part whose own state file is missing: nothing to stop, not alive."""

    def __init__(self, state_dir: Path):
        self.state_dir = self.directory = state_dir
        self.ssh_host, self.ssh_port, self.ssh_user = "127.0.0.1", 0, "root"
        self.installer_url = self.installer_sha256 = None
        self.python_interpreter = None
        self.private_key_file = state_dir / "gone"
        self.public_key = ""

    def alive(self) -> bool:
        return False

    def stop(self, remove: bool = True) -> None:
        if remove and self.state_dir.exists():
            import shutil

            shutil.rmtree(self.state_dir, ignore_errors=True)
