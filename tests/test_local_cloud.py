"""The local cloud's life cycle: `factory local up|status|down`, the state file, cleanup.

Real processes: moto's server, the build host (sshd and dockerd in their own
namespaces), the mirror. One cloud for the module; the last test stops it and checks
that nothing is left.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from factory.errors import LocalCloudError
from factory.local import cloud as local_cloud
from factory.local.procs import pid_alive

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("sshd") and not Path("/usr/sbin/sshd").exists(),
    reason="the local cloud needs root and openssh-server (make system-deps)",
)

FACTORY = str(Path(sys.executable).with_name("factory"))


def factory(*args: str, state_dir: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, FACTORY_STATE_DIR=str(state_dir))
    return subprocess.run([FACTORY, *args], capture_output=True, text=True, env=env, timeout=120, check=False)


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("local-cloud") / ".factory"
    yield d
    local_cloud.down(d)  # whatever a failing test left


@pytest.fixture(scope="module")
def up(state_dir):
    proc = factory("local", "up", "--json", state_dir=state_dir)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _pids(state_dir: Path) -> list[int]:
    data = json.loads((state_dir / "local-cloud.json").read_text())
    hosts = [json.loads((Path(d) / "buildhost.json").read_text()) for d in [data["build_host_dir"], *data.get("extra_build_host_dirs", [])]]
    mirror = json.loads((Path(data["mirror_dir"]) / "mirror.json").read_text())
    return [data["moto"]["pid"], *(p for h in hosts for p in (h["pid"], h["init_pid"])), mirror["pid"]]


def test_up_reports_where_everything_runs(up):
    assert up["running"] is True
    assert up["endpoint"].startswith("http://127.0.0.1:")
    assert up["build_host"]["ssh"].startswith("root@127.0.0.1:")
    assert up["mirror"]["installer_url"].startswith("http://127.0.0.1:")
    assert len(up["mirror"]["installer_sha256"]) == 64


def test_status_finds_it_from_another_process(up, state_dir):
    proc = factory("local", "status", "--json", state_dir=state_dir)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["endpoint"] == up["endpoint"]
    text = factory("local", "status", state_dir=state_dir)
    assert "local cloud: running" in text.stdout


def test_state_file_keeps_no_secret(up, state_dir):
    f = state_dir / "local-cloud.json"
    assert oct(f.stat().st_mode & 0o777) == "0o600"
    text = f.read_text()
    key = Path(up["build_host"]["private_key_file"])
    assert key.is_file() and str(key).startswith(str(state_dir))  # the throwaway dir
    assert key.read_text().strip() not in text
    assert "PRIVATE KEY" not in text and "testing" not in text


def test_the_build_host_key_is_imported_into_moto(up, state_dir):
    lc = local_cloud.running(state_dir)
    ec2 = lc.clients("us-east-1").ec2()
    names = [k["KeyName"] for k in ec2.describe_key_pairs()["KeyPairs"]]
    assert local_cloud.KEY_PAIR_NAME in names
    # Another region gets it on demand.
    lc.ensure_key_pair("eu-west-1")
    assert local_cloud.KEY_PAIR_NAME in [k["KeyName"] for k in lc.clients("eu-west-1").ec2().describe_key_pairs()["KeyPairs"]]


def test_the_build_host_answers_ssh_and_runs_docker(up, state_dir):
    lc = local_cloud.running(state_dir)
    proc = subprocess.run([*lc.host.ssh_args(), "docker", "info", "--format", "{{.Driver}}"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "overlay2"


def test_every_build_gets_a_new_builder_with_nothing_an_earlier_build_wrote(up, state_dir):
    """The first build gets the host `up` started as it is; the next one a relaunched host:
    same port and keys (SSH with the same known_hosts and key pair), a new init, none of
    the files the first build wrote; the build host's images stay (the local registry)."""
    lc = local_cloud.running(state_dir)
    started_pid = lc.host.pid
    with lc.builder() as (index, host):
        assert index == 0 and host.pid == started_pid  # never used: lent as `up` started it
        host.run("sh", "-c", "echo earlier > /etc/written-by-an-earlier-bake; tar -cf /tmp/empty.tar -T /dev/null; "
                             "docker import /tmp/empty.tar factory-test-kept:1 >/dev/null; rm /tmp/empty.tar")
        assert host.path("/etc/written-by-an-earlier-bake").exists()
    with lc.builder() as (again, fresh):
        assert again == 0 and fresh.ssh_port == host.ssh_port and fresh.pid != started_pid
        assert not fresh.path("/etc/written-by-an-earlier-bake").exists()
        assert fresh.run("test", "-e", "/etc/written-by-an-earlier-bake", check=False).returncode == 1
        assert fresh.run("docker", "image", "inspect", "factory-test-kept:1", check=False).returncode == 0
        proc = subprocess.run([*fresh.ssh_args(), "cat", "/etc/machine-id"], capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() and fresh.run("cat", "/etc/machine-id").stdout == proc.stdout
    assert local_cloud.running(state_dir).host.pid == fresh.pid  # another process finds the relaunched host
    assert not pid_alive(started_pid)
    fresh.run("docker", "rmi", "factory-test-kept:1")


def test_a_build_host_lent_in_another_process_is_not_lent_again_until_it_is_back(up, state_dir):
    """Two `factory bake` processes on one local cloud take turns on its build host: the
    second neither relaunches it under the first's build nor builds beside it."""
    import threading

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from pathlib import Path; from factory.local import cloud\n"
                               "lc = cloud.running(Path(sys.argv[1]))\n"
                               "with lc.builder() as (i, h):\n    print(i, h.pid, flush=True); sys.stdin.read()",
         str(state_dir)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        index, pid = holder.stdout.readline().split()
        assert index == "0"
        lc = local_cloud.running(state_dir)
        lending = lc.builder()
        got = []
        t = threading.Thread(target=lambda: got.append(lending.__enter__()), daemon=True)
        t.start()
        t.join(2.0)
        assert not got, "the host was lent while another process's build held it"
        assert lc.host.alive() and lc.host.pid == int(pid)  # not relaunched under that build
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    t.join(60)
    assert got and got[0][0] == 0  # back: lent (relaunched, since that build used it)
    assert got[0][1].pid != int(pid)
    lending.__exit__(None, None, None)


def test_fault_command_arms_the_running_cloud_and_clears_it(up, state_dir):
    import boto3
    from botocore.exceptions import ClientError

    proc = factory("local", "fault", "ec2:DescribeVpcs", "--kind", "error", "--times", "1", state_dir=state_dir)
    assert proc.returncode == 0, proc.stderr
    assert "armed: ec2:DescribeVpcs fails (error) for the next 1 call(s)" in proc.stdout
    ec2 = boto3.client("ec2", region_name="us-east-1", endpoint_url=up["endpoint"], aws_access_key_id="testing", aws_secret_access_key="testing")
    with pytest.raises(ClientError, match="InjectedFault"):
        ec2.describe_vpcs()
    ec2.describe_vpcs()  # only the next call
    assert factory("local", "fault", "ec2:DescribeVpcs", "--times", "5", state_dir=state_dir).returncode == 0
    assert factory("local", "fault", "--clear", state_dir=state_dir).returncode == 0
    ec2.describe_vpcs()
    bad = factory("local", "fault", "describe-vpcs", state_dir=state_dir)
    assert bad.returncode == 2 and "SERVICE:Operation" in bad.stderr and "Traceback" not in bad.stderr
    bad = factory("local", "fault", "ec2:DescribeVpcs", "--kind", "explode", state_dir=state_dir)
    assert bad.returncode == 2 and "error, throttle, drop" in bad.stderr


def test_a_second_up_is_refused(up, state_dir):
    proc = factory("local", "up", state_dir=state_dir)
    assert proc.returncode == 1
    assert "already runs" in proc.stderr and "Traceback" not in proc.stderr


def test_using_a_running_cloud_does_not_stop_it(up, state_dir):
    with local_cloud.using_local_cloud(state_dir) as (_lc, started):
        assert started is False
    assert local_cloud.running(state_dir).endpoint == up["endpoint"]


def test_parallel_bakes_get_a_build_host_each_and_down_stops_them(up, state_dir):
    """ensure_build_hosts(2) starts a second host (its own key pair in moto), recorded in the
    state file; builder() lends each build a different host, the first one first, and waits
    while both are busy; another process finds them again (the `down` below stops them)."""
    import threading

    lc = local_cloud.running(state_dir)
    lc.ensure_build_hosts(2)
    again = local_cloud.load(state_dir)
    assert [h.state_dir for h in again.hosts] == [lc.host.state_dir, state_dir / "buildhosts" / "1"] and again.hosts[1].alive()
    assert lc.build_target(index=1).keypair_name == "factory-local-buildhost-1"
    assert {k["KeyName"] for k in lc.clients().ec2().describe_key_pairs()["KeyPairs"]} >= {"factory-local-buildhost", "factory-local-buildhost-1"}
    with lc.builder() as (first, _), lc.builder() as (second, host):
        assert (first, second) == (0, 1) and host.ssh_port != lc.host.ssh_port
        waited = threading.Event()
        t = threading.Thread(target=lambda: (lc.builder().__enter__(), waited.set()), daemon=True)
        t.start()
        assert not waited.wait(1.0), "a third build got a host while both were building"
    assert waited.wait(60)


def test_down_leaves_no_process_and_no_mount(up, state_dir):
    pids = _pids(state_dir)
    assert all(pid_alive(p) for p in pids)
    proc = factory("local", "down", state_dir=state_dir)
    assert proc.returncode == 0, proc.stderr
    assert not [p for p in pids if pid_alive(p)]
    mounts = Path("/proc/self/mounts").read_text()
    assert str(state_dir) not in mounts
    assert not (state_dir / "local-cloud.json").exists()
    assert not (state_dir / "buildhost").exists() and not (state_dir / "buildhosts").exists()
    status = factory("local", "status", state_dir=state_dir)
    assert status.returncode == 1 and "not running" in status.stdout
    with pytest.raises(LocalCloudError, match="factory local up"):
        local_cloud.running(state_dir)
    again = factory("local", "down", state_dir=state_dir)
    assert again.returncode == 0 and "no local cloud was running" in again.stderr


def test_using_local_cloud_starts_and_stops_one(tmp_path):
    state = tmp_path / ".factory"
    with local_cloud.using_local_cloud(state) as (lc, started):
        assert started is True
        pids = _pids(state)
        assert lc.moto.alive()
    assert not [p for p in pids if pid_alive(p)]
    assert local_cloud.load(state) is None


USER_CREDENTIALS = {
    "AWS_SESSION_TOKEN": "IQoJb3JpZ2luX2VjEXAMPLE-a-real-users-token",
    "AWS_SECURITY_TOKEN": "IQoJb3JpZ2luX2VjEXAMPLE-a-real-users-token",
    "AWS_PROFILE": "prod-admin",
    "AWS_DEFAULT_PROFILE": "prod-admin",
}


def test_the_users_session_token_and_profile_never_reach_moto(monkeypatch, tmp_path):
    """Packer's environment on the local cloud carries moto's dummy keys and none of the
    user's session token or profile; on real AWS they stay (they are the credentials)."""
    from factory.cloud import Cloud
    from factory.local.aws.moto_server import LOCAL_ACCESS_KEY, MotoServer

    for name, value in USER_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    lc = local_cloud.LocalCloud(state_dir=tmp_path, region="us-east-1", moto=MotoServer(port=1, pid=0),
                                host=None, mirror=None, started_at="now")
    env = Cloud("local", lc).packer_env("us-east-1")
    assert not set(USER_CREDENTIALS) & set(env), {k: env[k] for k in USER_CREDENTIALS if k in env}
    assert env["AWS_ACCESS_KEY_ID"] == LOCAL_ACCESS_KEY and env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:1"
    assert USER_CREDENTIALS["AWS_SESSION_TOKEN"] not in "".join(env.values())
    # the boto3 clients factory makes for the local cloud sign with moto's keys, no token
    creds = lc.clients("us-east-1").ec2()._request_signer._credentials.get_frozen_credentials()
    assert creds.access_key == LOCAL_ACCESS_KEY and creds.token is None
    # real AWS: the user's environment is Packer's
    aws_env = Cloud("aws").packer_env("us-east-1")
    assert {k: aws_env[k] for k in USER_CREDENTIALS} == USER_CREDENTIALS
