"""A thin wrapper around the `packer` binary: version, init, validate, build, manifest.

Our own code, because the old `python-packer` package is unmaintained and speaks only
JSON templates. Everything goes through the real binary:

- `find_packer()` finds it (FACTORY_PACKER, else PATH) and reads its version; a missing
  or wrong binary is a PackerError with the install hint.
- `init()` runs `packer init` only where the version needs it (1.7+ with a
  `required_plugins` block); Debian's 1.6.6 has its plugins built in.
- `validate()` and `build()` run in the rendered folder, so `packer build .` there is
  exactly what we run. `build()` streams `-machine-readable` output: each line goes
  (with AWS secrets masked) to the log file, and each step to a progress callback.
- The AMI id is read from the `manifest` post-processor's JSON, never from Packer's
  human output.
- Ctrl-C, a timeout, or `cancel_all()` (from another thread) forwards SIGINT to Packer's
  process group, as a terminal would, and waits for Packer to terminate its instance and
  delete its key pair and security group before raising.
"""

from __future__ import annotations

import functools
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from factory.errors import PackerError

INSTALL_HINT = (
    "install it with `apt-get install packer` (Debian/Ubuntu) or from HashiCorp "
    "(https://developer.hashicorp.com/packer/install), or set FACTORY_PACKER to its path"
)

# Environment variables whose values must never reach a log file.
SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ACCESS_KEY_ID")
# Packer's own debug log echoes its environment and plugin chatter: keep it off.
_DROPPED_ENV = ("PACKER_LOG", "PACKER_LOG_PATH")

# How long Packer may take to clean up after an interrupt before we give up waiting.
CLEANUP_GRACE_SECONDS = 300.0


class BuildInterrupted(PackerError):
    """The build was interrupted (Ctrl-C, timeout or cancel); Packer was asked to clean up."""

    exit_code = 130


@dataclass(frozen=True)
class PackerInfo:
    path: str
    version: tuple[int, int, int]

    @property
    def version_str(self) -> str:
        return ".".join(str(p) for p in self.version)

    @property
    def uses_plugins(self) -> bool:
        """Packer 1.7+ moved builders and provisioners into plugins (`packer init`)."""
        return self.version >= (1, 7, 0)


@dataclass(frozen=True)
class BuildOutput:
    ami_id: str
    region: str
    artifact_id: str
    manifest: dict
    log_path: Path
    seconds: float


@dataclass
class _Run:
    proc: subprocess.Popen
    cancel: threading.Event = field(default_factory=threading.Event)


_RUNS: dict[int, _Run] = {}
_LOCK = threading.Lock()


def find_packer(binary: str | None = None) -> PackerInfo:
    """The Packer binary to use and its version, or a PackerError saying how to install it."""
    candidate = binary or os.environ.get("FACTORY_PACKER") or "packer"
    path = shutil.which(candidate)
    if not path:
        where = f"`{candidate}`" if (binary or os.environ.get("FACTORY_PACKER")) else "on PATH"
        raise PackerError(f"Packer not found {where}: {INSTALL_HINT}")
    stat = os.stat(path)
    return PackerInfo(path=path, version=_version_of(path, stat.st_mtime_ns, stat.st_size))


@functools.lru_cache(maxsize=8)
def _version_of(path: str, mtime_ns: int, size: int) -> tuple[int, int, int]:
    """`packer version` of one binary, asked once per process (render and build both need
    it, once per task); a replaced binary has another mtime or size and is asked again."""
    try:
        out = subprocess.run(
            [path, "version"], capture_output=True, text=True, timeout=30, env=_packer_env(None), check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PackerError(f"cannot run `{path} version` ({exc}): {INSTALL_HINT}") from None
    version = parse_version(out.stdout + out.stderr)
    if version is None:
        raise PackerError(
            f"`{path}` is not HashiCorp Packer (`{path} version` said {out.stdout.strip()[:80]!r}; "
            f"cracklib ships a `packer` too): {INSTALL_HINT}"
        )
    return version


def parse_version(text: str) -> tuple[int, int, int] | None:
    m = re.search(r"Packer v?(\d+)\.(\d+)\.(\d+)", text) or re.match(r"\s*v?(\d+)\.(\d+)\.(\d+)\s*$", text)
    return (int(m.group(1)), int(m.group(2)), int(m.group(3))) if m else None


def needs_init(info: PackerInfo, folder: Path) -> bool:
    """`packer init` is needed only by Packer 1.7+ and only for a `required_plugins` block."""
    if not info.uses_plugins:
        return False
    return any("required_plugins" in p.read_text(errors="replace") for p in Path(folder).glob("*.pkr.hcl"))


def init(info: PackerInfo, folder: Path, env: dict[str, str] | None = None) -> bool:
    """Install the folder's plugins when this Packer needs it. Returns whether it ran."""
    if not needs_init(info, folder):
        return False
    _run_simple(info, ["init", "."], folder, env, "packer init")
    return True


def validate(info: PackerInfo, folder: Path, env: dict[str, str] | None = None) -> None:
    """`packer validate .` in the folder; a refusal becomes one PackerError."""
    _run_simple(info, ["validate", "."], folder, env, "packer validate")


def _run_simple(info: PackerInfo, args: list[str], folder: Path, env: dict[str, str] | None, what: str) -> None:
    folder = Path(folder)
    if not folder.is_dir():
        raise PackerError(f"{what}: no such folder {folder}; run `factory render` first")
    try:
        out = subprocess.run(
            [info.path, *args], cwd=folder, capture_output=True, text=True, env=_packer_env(env), timeout=600,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise PackerError(f"{what} in {folder} did not finish within 10 minutes") from None
    if out.returncode != 0:
        text = _mask((out.stdout + out.stderr).strip(), env)
        raise PackerError(f"{what} failed in {folder} (Packer {info.version_str}):\n{text}")


def build(
    info: PackerInfo,
    folder: Path,
    *,
    env: dict[str, str] | None = None,
    log_path: Path | None = None,
    manifest_path: Path | None = None,
    on_step: Callable[[str], None] | None = None,
    timeout: float | None = None,
    cancel: threading.Event | None = None,
) -> BuildOutput:
    """`packer build -machine-readable .` in the folder; the AMI from the manifest.

    `on_step` receives each step Packer announces ("Launching a source AWS instance...").
    On Ctrl-C (KeyboardInterrupt in this thread), on `timeout`, or when `cancel` is set,
    SIGINT goes to Packer's process group and we wait for its cleanup, then raise
    BuildInterrupted (or PackerError for the timeout).
    """
    folder = Path(folder)
    log_path = Path(log_path) if log_path else folder / "packer.log"
    manifest_path = Path(manifest_path) if manifest_path else folder / "manifest.json"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    # The manifest post-processor appends; start clean so its last build is ours.
    manifest_path.unlink(missing_ok=True)
    full_env = _packer_env(env)
    cmd = [info.path, "build", "-machine-readable", "-color=false", "-on-error=cleanup", "."]
    start = time.monotonic()
    lines: queue.Queue[str | None] = queue.Queue()
    errors = _Errors()
    cancel = cancel or threading.Event()

    with open(log_path, "w", encoding="utf-8") as log:
        log.write(f"# {' '.join(cmd)}  (in {folder}, Packer {info.version_str})\n")
        try:
            proc = subprocess.Popen(
                cmd,
                cwd=folder,
                env=full_env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
                bufsize=1,
                # Its own process group: our SIGINT is forwarded once, on purpose, and a
                # terminal's Ctrl-C does not hit Packer and its plugins twice.
                start_new_session=True,
            )
        except OSError as exc:
            raise PackerError(f"cannot run {info.path}: {exc}: {INSTALL_HINT}") from None
        reader = threading.Thread(target=_pump, args=(proc, lines), daemon=True)
        reader.start()
        run = _Run(proc, cancel)
        with _LOCK:
            _RUNS[proc.pid] = run

        reason: str | None = None
        clean = False
        try:
            try:
                reason = _consume(lines, log, env, errors, on_step, start, timeout, cancel)
            except KeyboardInterrupt:
                reason = "interrupted"
            except BaseException:
                _interrupt_and_wait(proc, lines, log, env, on_step)
                raise
            if reason is not None:
                clean = _interrupt_and_wait(proc, lines, log, env, on_step)
            else:
                proc.wait()
        finally:
            with _LOCK:
                _RUNS.pop(proc.pid, None)
        seconds = time.monotonic() - start
        log.write(f"# packer exited with status {proc.returncode} after {seconds:.1f}s\n")

    cleanup = (
        "Packer cleaned up its instance, key pair and security group"
        if clean
        else "Packer did not confirm its cleanup: look for instances, key pairs and security groups "
        "named packer_* (tag factory:task) and remove them"
    )
    if reason == "timeout":
        raise PackerError(f"packer build timed out after {timeout:.0f}s and was interrupted; {cleanup} (log: {log_path})")
    if reason is not None:
        raise BuildInterrupted(f"packer build {reason}; {cleanup} (log: {log_path})")
    if proc.returncode != 0:
        detail = "\n".join(dict.fromkeys(errors)) or "no error message; see the log"
        if errors.fatal:
            detail = errors.ansible_summary() + "\n" + detail
        raise PackerError(f"packer build failed in {folder}:\n{detail}\n(full log: {log_path})")
    ami_id, region, artifact_id, manifest = read_manifest(manifest_path)
    return BuildOutput(ami_id, region, artifact_id, manifest, log_path, seconds)


def read_manifest(path: Path) -> tuple[str, str, str, dict]:
    """(ami_id, region, artifact_id, manifest) of the last run recorded in the manifest."""
    try:
        manifest = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise PackerError(
            f"Packer finished but wrote no manifest at {path}: the template needs the "
            "`manifest` post-processor with that output"
        ) from None
    except json.JSONDecodeError as exc:
        raise PackerError(f"Packer's manifest {path} is not JSON ({exc})") from None
    builds = manifest.get("builds") or []
    last = manifest.get("last_run_uuid")
    ours = [b for b in builds if b.get("packer_run_uuid") == last] or builds[-1:]
    if not ours:
        raise PackerError(f"Packer's manifest {path} lists no build")
    artifact_id = str(ours[-1].get("artifact_id", ""))
    # amazon-ebs: "us-east-1:ami-0123,eu-west-1:ami-4567" (the first is the build region).
    first = artifact_id.split(",")[0]
    region, _, ami_id = first.rpartition(":")
    if not ami_id.startswith("ami-"):
        raise PackerError(f"Packer's manifest {path} has no AMI id (artifact_id {artifact_id!r})")
    return ami_id, region, artifact_id, manifest


def cancel_all() -> None:
    """Ask every running build (any thread) to interrupt Packer and clean up."""
    with _LOCK:
        runs = list(_RUNS.values())
    for run in runs:
        run.cancel.set()


def parse_line(line: str) -> tuple[str, str, list[str]] | None:
    """One machine-readable line -> (target, type, data), with Packer's escapes undone."""
    parts = line.rstrip("\n").split(",")
    if len(parts) < 3 or not parts[0].isdigit():
        return None
    data = [p.replace("%!(PACKER_COMMA)", ",").replace("\\n", "\n").replace("\\r", "\r") for p in parts[3:]]
    return parts[1], parts[2], data


def step_text(message: str) -> str:
    """`==> amazon-ebs.x: Launching a source AWS instance...` -> `Launching a source AWS instance`."""
    text = message.strip().splitlines()[0] if message.strip() else ""
    text = re.sub(r"^(==>|-->)?\s*[\w.-]+\.[\w.-]+:\s*", "", text)
    return text.rstrip(". ").strip()


# -- internals ---------------------------------------------------------------------------


class _Errors(list):
    """Packer's error lines, plus the `fatal:` block of a failed Ansible task."""

    MAX_LINES = 12

    def __init__(self) -> None:
        super().__init__()
        self.ansible_task: str | None = None
        self.fatal: list[str] = []
        self.fatal_task: str | None = None
        self.capturing = False

    def watch(self, text: str) -> None:
        stripped = text.strip()
        if re.match(r"(fatal|failed): \[", stripped):
            self.capturing, self.fatal, self.fatal_task = True, [], self.ansible_task
            rest = stripped.split("=>", 1)[1].strip() if "=>" in stripped else ""
            if rest:
                self.fatal.append(rest)
        elif self.capturing:
            if not stripped or stripped.startswith(("PLAY RECAP", "TASK [")):
                self.capturing = False
            elif len(self.fatal) < self.MAX_LINES:
                self.fatal.append(stripped)

    def ansible_summary(self) -> str:
        msg = [line for line in self.fatal if not re.match(r"(changed|evaluated_to|assertion|_ansible\w*): ", line)]
        body = "\n  ".join(msg or self.fatal)
        return f"Ansible failed at task [{self.fatal_task or '?'}]:\n  {body}"


def run_environment(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment Packer runs with, and so the ansible-playbook its provisioner starts."""
    return _packer_env(env)


def _packer_env(env: dict[str, str] | None) -> dict[str, str]:
    base = dict(os.environ if env is None else env)
    for name in _DROPPED_ENV:
        base.pop(name, None)
    # Packer's ansible provisioner runs `ansible-playbook` from PATH: use the one
    # installed beside factory (its virtualenv) when PATH has none.
    venv_bin = Path(sys.executable).parent
    path = base.get("PATH", os.defpath)
    if (venv_bin / "ansible-playbook").exists() and not shutil.which("ansible-playbook", path=path):
        base["PATH"] = f"{venv_bin}{os.pathsep}{path}"
    base.setdefault("CHECKPOINT_DISABLE", "1")  # no version check phoning home
    base.setdefault("PACKER_NO_COLOR", "1")
    return base


def _secrets(env: dict[str, str] | None) -> list[str]:
    src = os.environ if env is None else env
    values = {src.get(name, "") for name in SECRET_ENV} | {os.environ.get(name, "") for name in SECRET_ENV}
    return sorted((v for v in values if len(v) >= 4), key=len, reverse=True)


def _mask(text: str, env: dict[str, str] | None) -> str:
    for value in _secrets(env):
        text = text.replace(value, "****")
    return text


def _pump(proc: subprocess.Popen, lines: queue.Queue[str | None]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.put(line)
    lines.put(None)


def _consume(
    lines: queue.Queue[str | None],
    log,
    env: dict[str, str] | None,
    errors: _Errors,
    on_step: Callable[[str], None] | None,
    start: float,
    timeout: float | None,
    cancel: threading.Event,
) -> str | None:
    """Log and report lines until Packer's output ends. Returns why we must stop, if so."""
    secrets = _secrets(env)
    while True:
        if cancel.is_set():
            return "cancelled"
        if timeout is not None and time.monotonic() - start > timeout:
            return "timeout"
        try:
            line = lines.get(timeout=0.2)
        except queue.Empty:
            continue
        if line is None:
            return None
        _handle_line(line, log, secrets, errors, on_step)


def _handle_line(line: str, log, secrets: Iterable[str], errors: _Errors, on_step) -> None:
    for value in secrets:
        line = line.replace(value, "****")
    log.write(line if line.endswith("\n") else line + "\n")
    log.flush()
    parsed = parse_line(line)
    if parsed is None:
        return
    target, kind, data = parsed
    if kind == "error" and target and data:
        # The per-build error summary: exactly what went wrong, once.
        errors.append(data[0].strip())
    elif kind == "ui" and len(data) >= 2 and data[0] in ("say", "error"):
        text = step_text(data[1])
        if text and on_step is not None:
            on_step(text)
    elif kind == "ui" and len(data) >= 2 and data[0] == "message":
        # Ansible's output, relayed by the provisioner: its task headers are our steps,
        # and its `fatal:` block is what a failed bake must say.
        text = re.sub(r"^\s*[\w.-]+\.[\w.-]+:\s?", "", data[1].rstrip("\n"))
        m = re.search(r"TASK \[(.+?)\] \*+", text)
        if m:
            errors.ansible_task = m.group(1)
            errors.capturing = False
            if on_step is not None:
                on_step(f"Ansible: {m.group(1)}")
        else:
            errors.watch(text)


def _interrupt_and_wait(proc, lines, log, env, on_step) -> bool:
    """SIGINT to Packer's group (as a terminal's Ctrl-C), then wait for its cleanup.

    Returns whether Packer said it cancelled cleanly."""
    clean = False
    if proc.poll() is None:
        log.write("# factory: interrupt; forwarding SIGINT to Packer and waiting for its cleanup\n")
        log.flush()
        if on_step:
            on_step("Interrupted: waiting for Packer to clean up")
        try:
            os.killpg(proc.pid, signal.SIGINT)
        except ProcessLookupError:
            pass
    secrets = _secrets(env)
    deadline = time.monotonic() + CLEANUP_GRACE_SECONDS
    errors = _Errors()
    while True:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            line = ""
        except KeyboardInterrupt:
            # A second Ctrl-C while cleaning up: keep waiting; cleaning up is the point.
            continue
        if line is None:
            break
        if line:
            _handle_line(line, log, secrets, errors, on_step)
            clean = clean or "Cleanly cancelled" in line
        if time.monotonic() > deadline:
            log.write("# factory: Packer did not finish cleaning up in time; killing it\n")
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            break
    while True:
        try:
            proc.wait()
            break
        except KeyboardInterrupt:
            continue
    return clean
