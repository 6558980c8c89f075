"""Shared fixtures: a CLI runner, the repository's paths, moto's server and a real Docker engine."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parent.parent
SPECS = REPO / "specs"
CALL_LOG_ENV = "FACTORY_LOCAL_CALL_LOG"


def pytest_configure(config):
    """Every local cloud this session starts (in-process or in a `factory` subprocess) appends
    each AWS call it answers, with who made it, to one file: tests/test_zz_iam_policy.py
    proves `factory iam-policy` against it."""
    import os
    import tempfile

    if not os.environ.get(CALL_LOG_ENV):
        fd, path = tempfile.mkstemp(prefix="factory-calls-", suffix=".log")
        os.close(fd)
        os.environ[CALL_LOG_ENV] = path
    config.factory_call_log = Path(os.environ[CALL_LOG_ENV])
    # Batch resources spend 0.3 s (not 1 s) in each transitional state: every wait still sees
    # CREATING/UPDATING/DELETING, and the suite waits a third as long. A test that needs a
    # longer window starts its own server with `state_delay=`.
    os.environ.setdefault("FACTORY_LOCAL_STATE_DELAY", "0.3")
    _ctrl_c_as_a_terminal_gives_it()
    _no_hypothesis_deadlines()
    from tests import cpu_profile

    cpu_profile.register(config)  # FACTORY_TEST_CPU_PROFILE=FILE: CPU seconds by module


def _no_hypothesis_deadlines() -> None:
    """Hypothesis fails an example slower than 200 ms by default: a timing check, which on a
    busy machine (other test files running beside) fails tests that are right. Speed is the
    benchmarks' business (bench/), never a test's."""
    from hypothesis import settings

    settings.register_profile("factory", deadline=None)
    settings.load_profile("factory")


def _ctrl_c_as_a_terminal_gives_it() -> None:
    """A shell starts background jobs (`make test &`, `nohup ...`) with SIGINT ignored, and
    every child inherits that: `factory` would then rightly ignore the Ctrl-C the interrupt
    tests send. Give the children the disposition a terminal's foreground job has."""
    import signal

    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


# What the longest modules take in a whole-suite run on 2 cores (wall seconds of each
# module, from FACTORY_TEST_CPU_PROFILE's lines of an idle `make test`: docs/test-speed.md).
# Only the order matters: longest first, so the modules that mostly wait (the register crash
# staircases, the local runs, the grow agent's) start beside the ones that keep a core busy
# (the bakes), and test_crash_consistency_bake_build before the other two crash modules,
# which then take its clean bake rather than baking their own (tests/bake_crash.py `clean`).
MODULE_SECONDS = {
    "test_crash_consistency": 317,  # waits on Batch's states: 0.4 of a core
    "test_local_run": 310,  # three bakes, then runs that write at a rate
    "test_crash_consistency_bake_build": 208,
    "test_bake": 197,
    "test_grow_agent": 160,  # waits on volumes: 0.2 of a core
    "test_crash_consistency_bake_after_ami": 158,
    "test_distribute": 133,
    "test_roles": 123,
    "test_crash_consistency_bake_finish": 120,
    "test_register": 88,
    "test_local_jobs": 61,
    "test_status": 61,
    "test_gpu": 59,
    "test_bake_check_ecr": 56,
    "test_killed_bake": 55,
    "test_show": 50,
    "test_buildhost": 47,
    "test_bake_arm64": 42,
}
SLOW_MODULE_SECONDS = 60  # a module with a slow test not listed above


def pytest_collection_modifyitems(session, config, items):
    """The longest modules first, each module's tests kept together and in order: `make
    test` hands whole files to its workers in this order (`--no-loadscope-reorder`), so the
    longest files start at once and the quick ones fill the gaps at the end, rather than a
    long file starting last and running alone (a worker is handed its next file while the
    last two tests of the one it runs are still to come, so a long file handed out late
    keeps its worker busy after the other is done). Modules with a slow test (real Packer,
    Ansible, Docker) and not in MODULE_SECONDS come next, then the rest. And whether this
    session runs the whole suite (for the IAM proof)."""
    slow_modules = {item.module.__name__ for item in items if item.get_closest_marker("slow")}

    def seconds(item) -> int:
        name = item.module.__name__.rsplit(".", 1)[-1]
        return MODULE_SECONDS.get(name, SLOW_MODULE_SECONDS if item.module.__name__ in slow_modules else 0)

    items.sort(key=lambda item: -seconds(item))
    config.factory_whole_suite = _runs_whole_suite(config) or _whole_suite_mark(config).exists()


def _runs_whole_suite(config) -> bool:
    """No -k/-m, no chosen files: only then can "every policy action was called somewhere"
    be checked. (`--ignore tests/test_zz_iam_policy.py` leaves the rest whole: `make test`
    runs the IAM proof after them, in a session of its own.)"""
    chosen = [a for a in config.args if Path(a).resolve() not in (REPO, REPO / "tests")]
    return not chosen and not config.option.keyword and not config.option.markexpr


def _whole_suite_mark(config) -> Path:
    """Left beside the call log by a whole-suite session, for the IAM proof's own session."""
    return Path(f"{config.factory_call_log}.whole-suite")




def pytest_sessionfinish(session, exitstatus):
    """In the session that ran every other test (the xdist controller too, which collects
    nothing itself), say so to the IAM proof's session."""
    import os

    config = session.config
    if os.environ.get("PYTEST_XDIST_WORKER") or not _runs_whole_suite(config) or exitstatus != 0:
        return
    _whole_suite_mark(config).touch()


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
    from factory.local.aws.moto_server import MotoServer

    server = MotoServer.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def docker_engine(tmp_path_factory):
    """A real Docker engine (tests/docker_fixtures.py) with the busybox image IMAGE on it."""
    from docker_fixtures import IMAGE

    from factory.local.docker_engine import DockerEngine, import_busybox_image

    engine = DockerEngine.ensure(tmp_path_factory.mktemp("docker-engine"))
    try:
        import_busybox_image(IMAGE, env=engine.env())
        yield engine
    finally:
        engine.stop()


@pytest.fixture
def docker_env(docker_engine, monkeypatch):
    """DOCKER_HOST set for this test (in-process CLI runs and subprocesses alike)."""
    if docker_engine.host is not None:
        monkeypatch.setenv("DOCKER_HOST", docker_engine.host)
    monkeypatch.delenv("DOCKER_CONTEXT", raising=False)
    return docker_engine.env()
