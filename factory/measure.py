"""`factory measure`: run a task once in a container and measure the disk it holds.

The run is staged the way Nextflow stages a task on AWS Batch: every input and index
path is copied (`docker cp`) into the container's working directory under its own name,
so its bytes sit in the container's writable layer as they do on a Batch host's Docker
volume; COMMAND then runs in that directory, without network unless asked.

What is measured is the container's writable layer (overlay2's upper directory, read
straight from disk, plus any anonymous volume the image declares), sampled by
`factory.disk_sampler.Sampler` while COMMAND runs:

- input  = what the staged inputs hold in the layer, index = the same for the index;
- output = what the working directory holds beyond them when COMMAND exits;
- scratch = peak - input - index - output: whatever else was held at the peak;

so the four add up to the peak, which is what the sizing model adds up. The container,
its layer (the staged copies with it) and its anonymous volumes are removed whatever
happens: a failing command, an error, Ctrl-C or SIGTERM. A container left by a run that
was killed outright (SIGKILL) is removed by the next run on the same machine.

Reading the layer directly needs the engine on this machine, the overlay2 driver, and
permission to read Docker's data root (root): factory says so when one is missing.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Iterator

from factory.disk_sampler import DEFAULT_INTERVAL_S, Sampler, SamplerStats, dir_bytes
from factory.docker_cli import DockerCli
from factory.errors import DockerError, MeasureError, UsageError

WORKDIR = "/work"
LABEL = "factory.measure"  # value: "<hostname>:<pid>" of the factory process that made the container
LOG_TAIL_LINES = 20


@dataclass(frozen=True)
class MeasureRun:
    """What to run: COMMAND in IMAGE, with INPUTS and INDEX staged into the working directory."""

    image: str
    command: tuple[str, ...]
    inputs: tuple[Path, ...]
    index: tuple[Path, ...] = ()
    network: str = "none"
    workdir: str = WORKDIR
    interval: float = DEFAULT_INTERVAL_S
    disk_reader: str = "auto"  # "layer", "engine", or "auto": the layer when this machine can read it, else the engine


@dataclass(frozen=True)
class Measurement:
    """One measured run. Bytes are allocated disk blocks; input + index + scratch + output == peak."""

    input_bytes: int
    index_bytes: int
    scratch_bytes: int
    output_bytes: int
    wall_s: float
    exit_status: int
    image: str
    image_digest: str
    date: str  # UTC, ISO 8601, when COMMAND started
    sampler: SamplerStats
    log_tail: str = ""
    oom_killed: bool = False
    disk_reader: str = "layer"  # how the disk was read: "layer" (overlay2's upper dir, blocks) or "engine" (SizeRw)
    notes: tuple[str, ...] = field(default=())

    @property
    def peak_bytes(self) -> int:
        return self.input_bytes + self.index_bytes + self.scratch_bytes + self.output_bytes


def staged_name(path: Path) -> str:
    """The name a path is staged under: its own (a symlink's name, not its target's, as Nextflow stages it)."""
    return os.path.basename(os.path.abspath(path))


def check_paths(inputs: tuple[Path, ...], index: tuple[Path, ...]) -> None:
    """Every path exists and every staged name is unique (they share one working directory)."""
    if not inputs:
        raise UsageError("give at least one --input PATH (the task's input, copied into its working directory)")
    names: dict[str, Path] = {}
    for option, paths in (("--input", inputs), ("--index", index)):
        for p in paths:
            if not p.exists():
                raise UsageError(f"{option} {p}: no such file or folder; fix the path")
            if not (p.is_file() or p.is_dir()):
                raise UsageError(f"{option} {p}: not a file or a folder")
            name = staged_name(p)
            if name in names:
                raise UsageError(
                    f"{option} {p}: its name {name!r} is already staged from {names[name]}; "
                    "both would land in the same working directory: rename one"
                )
            names[name] = p


def measure(run: MeasureRun, docker: DockerCli | None = None, log: IO[str] | None = None) -> Measurement:
    """Run `run` once in a fresh container and measure it. The container is gone when this returns or raises.

    `log`, when given, receives COMMAND's output (stdout and stderr) while it runs.
    """
    check_paths(run.inputs, run.index)
    if not run.command:
        raise UsageError("give the command to measure after --, e.g. -- sh -c 'salmon quant ...'")
    if run.disk_reader not in DISK_READERS:
        raise UsageError(f"--disk-reader {run.disk_reader!r}: expected one of {', '.join(DISK_READERS)}")
    if not run.workdir.startswith("/") or run.workdir.rstrip("/") == "":
        raise UsageError(f"--workdir {run.workdir!r}: must be an absolute path inside the container other than /")
    docker = docker or DockerCli()
    docker.ping()
    image = docker.inspect("image", run.image)
    if image is None:
        raise DockerError(
            f"image {run.image} is not on the Docker engine ({docker.where}): "
            f"`docker pull {run.image}` (or `docker load` / `docker import` it) and try again"
        )
    digest = (image.get("RepoDigests") or [None])[0] or image["Id"]
    remove_leftovers(docker)

    name = f"factory-measure-{os.getpid()}-{secrets.token_hex(4)}"
    procs: list[subprocess.Popen] = []  # `docker logs -f` and `docker wait`, ended in the clean-up
    with _sigterm_as_interrupt():
        try:
            return _measure_in(docker, run, name, digest, procs, log)
        finally:
            with _sigint_ignored():
                for proc in procs:
                    _end(proc)
                docker.remove_container(name)
                if docker.inspect("container", name) is not None:
                    raise MeasureError(f"container {name} could not be removed; remove it with `docker rm -f -v {name}`")


def _measure_in(docker: DockerCli, run: MeasureRun, name: str, digest: str, procs: list[subprocess.Popen], log: IO[str] | None) -> Measurement:
    workdir = run.workdir.rstrip("/")
    docker.run(
        "create", "--name", name, "--label", f"{LABEL}={socket.gethostname()}:{os.getpid()}",
        "--network", run.network, "--workdir", workdir, run.image, *run.command,
    )
    info = docker.inspect("container", name) or {}
    disk = _disk_reader(run.disk_reader, info, docker, name, workdir)
    notes = list(disk.notes)
    read = disk.held
    _make_dir(docker, name, workdir)  # engines make --workdir with the container; make sure, before staging into it
    base = read()
    disk.mark_empty()
    for p in run.inputs:
        _stage(docker, p, name, workdir)
    staged_inputs = read()
    for p in run.index:
        _stage(docker, p, name, workdir)
    staged = read()
    input_bytes = max(0, staged_inputs - base)
    index_bytes = max(0, staged - staged_inputs)

    copier: threading.Thread | None = None
    sampler = Sampler(read, interval=run.interval)
    sampler.sample()  # the staged state: the peak is never below it
    date = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    started = time.monotonic()
    sampler.start()
    try:
        try:
            docker.run("start", name)
        except DockerError as exc:
            raise MeasureError(
                f"the command could not start in {run.image}: {exc.message.removeprefix(f'`docker start {name}` failed: ')}; "
                f"check that {run.command[0]!r} exists in the image (or give it with its full path)"
            ) from None
        if log is not None:
            follower = subprocess.Popen(
                ["docker", "logs", "--follow", name], env=docker.env, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace", start_new_session=True,
            )
            procs.append(follower)
            copier = threading.Thread(target=_copy_lines, args=(follower.stdout, log), name="measure-logs", daemon=True)
            copier.start()
        waiter = subprocess.Popen(
            ["docker", "wait", name], env=docker.env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        )
        procs.append(waiter)
        _, err = waiter.communicate()
        if waiter.returncode != 0:
            raise docker.error(("wait", name), err)
        elapsed = time.monotonic() - started
    finally:
        sampler.stop()
    sampler.sample()  # the state COMMAND left: the peak is never below it either
    stats = sampler.stats()
    for proc in procs:  # `docker logs -f` ends with the container; let it flush
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
    if copier is not None:
        copier.join(timeout=5)

    output_bytes = disk.outputs(input_bytes, index_bytes, {staged_name(p) for p in (*run.inputs, *run.index)})
    peak = stats.peak_bytes - base
    scratch_bytes = max(0, peak - input_bytes - index_bytes - output_bytes)

    state = (docker.inspect("container", name) or {}).get("State") or {}
    wall = _wall_seconds(state) or elapsed
    tail = docker.run("logs", "--tail", str(LOG_TAIL_LINES), name, check=False)
    if stats.max_gap_s > 1.0:
        notes.append(
            f"samples were up to {stats.max_gap_s:.1f} s apart (each sample took long): "
            "a peak held for less than that may be missed"
        )
    return Measurement(
        input_bytes=input_bytes, index_bytes=index_bytes, scratch_bytes=scratch_bytes, output_bytes=output_bytes,
        wall_s=round(wall, 3), exit_status=int(state.get("ExitCode", -1)), image=run.image, image_digest=digest,
        date=date, sampler=stats, log_tail=(tail.stdout + tail.stderr).strip(),
        oom_killed=bool(state.get("OOMKilled")), notes=tuple(notes), disk_reader=disk.kind,
    )


def _stage(docker: DockerCli, path: Path, container: str, workdir: str) -> None:
    """Copy a file or folder into the container's working directory under its own name.

    A symlink given as the path is followed (its target's bytes are staged under the link's
    name); symlinks inside a folder are copied as symlinks, as `docker cp` does.
    """
    src = os.path.abspath(path)
    proc = docker.run("cp", "--follow-link", src, f"{container}:{workdir}/{staged_name(path)}", timeout=None, check=False)
    if proc.returncode != 0:
        raise MeasureError(f"could not stage {path} into the container: {' '.join(proc.stderr.split())}")


DISK_READERS = ("auto", "layer", "engine")


class _LayerOnDisk:
    """The container's overlay2 upper directory (and anonymous volumes) walked on this machine: allocated blocks."""

    kind = "layer"
    notes: tuple[str, ...] = ()

    def __init__(self, layer: Path, volumes: list[Path], workdir: str):
        self.paths = [layer, *volumes]
        self.work = layer / workdir.lstrip("/")
        self.work_base = 0

    def held(self) -> int:
        return dir_bytes(self.paths)

    def mark_empty(self) -> None:
        self.work_base = dir_bytes([self.work])

    def outputs(self, input_bytes: int, index_bytes: int, staged: set[str]) -> int:
        return max(0, dir_bytes([self.work]) - self.work_base - input_bytes - index_bytes)


class _ThroughEngine:
    """The engine's own count (SizeRw of `docker container inspect --size`): apparent file sizes.

    For an engine whose data this machine cannot read (another machine, or no root). A
    sample costs an API call in which the engine walks the layer (bench/measure); an image's
    anonymous volumes are not counted. What the working directory holds at the end is read
    as the tar `docker cp` streams of each entry COMMAND added there.
    """

    kind = "engine"

    def __init__(self, docker: DockerCli, container: str, workdir: str, why: str):
        self.docker, self.container, self.workdir = docker, container, workdir
        self.notes = (
            f"read the container's disk through the engine ({why}): each sample is an API call, sizes are apparent "
            "file sizes, anonymous volumes are not counted; run as root on the engine's machine to read the layer itself",
        )

    def held(self) -> int:
        out = self.docker.run("container", "inspect", "--size", "--format", "{{.SizeRw}}", self.container).stdout.strip()
        return max(0, int(out or 0))

    def mark_empty(self) -> None:
        pass

    def outputs(self, input_bytes: int, index_bytes: int, staged: set[str]) -> int:
        import tarfile

        prefix = self.workdir.rstrip("/") + "/"
        top = set()
        for line in self.docker.run("diff", self.container).stdout.splitlines():
            kind, _, path = line.partition(" ")
            if kind in ("A", "C") and path.startswith(prefix):
                name = path[len(prefix):].split("/", 1)[0]
                if name and name not in staged:
                    top.add(name)
        total = 0
        for name in sorted(top):
            proc = subprocess.Popen(
                ["docker", "cp", f"{self.container}:{prefix}{name}", "-"], env=self.docker.env,
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
            )
            try:
                with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
                    total += sum(m.size for m in tar if m.isfile())
            finally:
                _end(proc)
        return total


def _disk_reader(mode: str, info: dict, docker: DockerCli, container: str, workdir: str) -> _LayerOnDisk | _ThroughEngine:
    if mode == "engine":
        return _ThroughEngine(docker, container, workdir, "as asked")
    try:
        layer = _writable_layer(info, docker.where)
    except MeasureError as exc:
        if mode == "layer":
            raise
        return _ThroughEngine(docker, container, workdir, exc.message.split("; ")[0])
    volumes = [Path(m["Source"]) for m in info.get("Mounts") or [] if m.get("Type") == "volume" and m.get("Source")]
    return _LayerOnDisk(layer, volumes, workdir)


def _make_dir(docker: DockerCli, container: str, workdir: str) -> None:
    """mkdir -p WORKDIR inside a created (not started) container: a tar of its directories through `docker cp -`."""
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        parts = Path(workdir.lstrip("/")).parts
        for i in range(1, len(parts) + 1):
            info = tarfile.TarInfo("/".join(parts[:i]))
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
    proc = subprocess.run(
        ["docker", "cp", "-", f"{container}:/"], input=buf.getvalue(), env=docker.env, capture_output=True, timeout=120,
    )
    if proc.returncode != 0:
        raise MeasureError(f"could not make the working directory {workdir} in the container: {proc.stderr.decode(errors='replace').strip()}")


def _writable_layer(info: dict, where: str) -> Path:
    """The container's overlay2 upper directory, checked readable from here."""
    driver = info.get("GraphDriver") or {}
    upper = (driver.get("Data") or {}).get("UpperDir")
    if driver.get("Name") != "overlay2" or not upper:
        raise MeasureError(
            f"the Docker engine ({where}) stores containers with the {driver.get('Name') or 'unknown'} storage driver; "
            "factory measure reads overlay2's writable layer (Docker's default driver, the one ECS-optimized AL2023 and AL2 use): "
            "use an engine with overlay2"
        )
    path = Path(upper)
    try:
        with os.scandir(path):
            pass
    except PermissionError:
        raise MeasureError(
            f"cannot read the container's writable layer {path} (permission denied); "
            "factory measure reads it from disk, so run it as root (e.g. sudo) on the Docker engine's machine"
        ) from None
    except FileNotFoundError:
        raise MeasureError(
            f"the container's writable layer {path} is not on this machine (the engine, {where}, runs elsewhere); "
            "run factory measure on the machine the Docker engine runs on"
        ) from None
    return path


def _wall_seconds(state: dict) -> float | None:
    """FinishedAt - StartedAt from the engine's own clock (RFC 3339 with nanoseconds)."""
    try:
        start, end = (_parse_time(state[k]) for k in ("StartedAt", "FinishedAt"))
    except (KeyError, ValueError):
        return None
    seconds = (end - start).total_seconds()
    return seconds if seconds >= 0 else None


def _parse_time(text: str) -> datetime:
    head, _, frac = text.rstrip("Z").partition(".")
    micros = (frac + "000000")[:6] if frac else "0"
    return datetime.strptime(head, "%Y-%m-%dT%H:%M:%S").replace(microsecond=int(micros), tzinfo=UTC)


def remove_leftovers(docker: DockerCli) -> list[str]:
    """Remove containers of earlier measure runs on this machine whose factory process is gone (killed outright)."""
    out = docker.run("ps", "--all", "--filter", f"label={LABEL}", "--format", '{{.Names}}\t{{.Label "' + LABEL + '"}}').stdout
    removed = []
    host = socket.gethostname()
    for line in out.splitlines():
        cname, _, owner = line.partition("\t")
        owner_host, _, pid = owner.rpartition(":")
        if owner_host != host or not pid.isdigit() or int(pid) == os.getpid():
            continue
        if not _pid_alive(int(pid)):
            docker.remove_container(cname)
            removed.append(cname)
    return removed


def _pid_alive(pid: int) -> bool:
    from factory.local.procs import pid_alive

    return pid_alive(pid)


def _copy_lines(source: IO[str], sink: IO[str]) -> None:
    """COMMAND's output, line by line, to `sink` (any text stream: a terminal, a test's capture)."""
    with contextlib.suppress(ValueError, OSError):  # the sink or the pipe closed under us
        for line in source:
            sink.write(line)
            sink.flush()


def _end(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt (as Ctrl-C does), so the same clean-up runs. Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """A second Ctrl-C (or SIGTERM) during clean-up must not leave the container behind."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
