"""The roles, run for real: ansible-playbook over SSH into the throwaway build host, with
a real dockerd (overlay2), the mirror's Miniconda stand-in verified by its sha256, and
the devicemapper branch as far as its file (that driver cannot run here)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from buildhost_fixtures import ANSIBLE, VENV_BIN, changed, requires_buildhost, role_playbook, run_playbook, show, start_host, tar_of

pytestmark = pytest.mark.slow

PREFIX = "/home/ec2-user/miniconda"
AWSCLI_VERSION = "1.32.27"  # the role's pinned miniconda_awscli_awscli_version



@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    from factory.local.builder.mirror import Mirror

    base = tmp_path_factory.mktemp("roles")
    mirror = Mirror.start(base / "mirror")
    host = start_host(base / "host")
    try:
        yield host, mirror, base
    finally:
        host.stop(remove=True)
        mirror.stop()


def installer_vars(mirror, prefix=PREFIX):
    return {
        "miniconda_awscli_prefix": prefix,
        "miniconda_awscli_installer_url": mirror.installer_url,
        "miniconda_awscli_installer_checksum": f"sha256:{mirror.installer_sha256}",
    }


def test_ansible_lint_production_profile_is_clean():
    env = dict(os.environ, PATH=f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", NO_COLOR="1")
    p = subprocess.run(
        [str(VENV_BIN / "ansible-lint"), "--profile", "production", "--offline", "bake.yml", "roles"],
        cwd=ANSIBLE, capture_output=True, text=True, env=env, timeout=300,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Profile 'production' was required, and it passed" in p.stdout + p.stderr


@requires_buildhost
def test_bake_roles_overlay2_then_idempotent(cloud, tmp_path):
    """The bake's roles before generalize (which stops Docker and removes the login, so a
    second run needs a new instance: tests/test_bake.py's test_the_baked_host_is_generalized
    proves the whole play ends generalized, on a real bake)."""
    host, mirror, _ = cloud
    play = role_playbook(tmp_path, "docker_storage", "miniconda_awscli", "bake_check")
    report = tmp_path / "report.json"
    ev = {
        "factory_become": False,
        "ansible_python_interpreter": host.python_interpreter,
        "docker_storage_volume_gib": 20,
        "bake_check_prefix": PREFIX,
        "bake_check_min_gib": 20,
        "bake_check_report_dest": str(report),
        # a setting the running dockerd can only show if the handler really restarted it
        "docker_storage_daemon_options": {"labels": ["factory-role-test=1"]},
        **installer_vars(mirror),
    }
    # As on the ECS-optimized AMIs: no busybox, and ec2-user's home is private.
    host.run("sh", "-c", "rm -f /bin/busybox /usr/bin/busybox && mkdir -p -m 0700 /home/ec2-user && chmod 0700 /home/ec2-user")
    first = run_playbook(host, play, ev, tmp_path)
    assert first.returncode == 0, show(first)
    assert changed(first) > 0
    # overlay2: daemon.json written inside the throwaway root, and Docker restarted with it
    daemon = json.loads(host.path("/etc/docker/daemon.json").read_text())
    assert daemon == {"data-root": "/var/lib/docker", "storage-driver": "overlay2", "labels": ["factory-role-test=1"]}
    assert "RUNNING HANDLER [docker_storage : Restart docker]" in first.stdout
    info = host.run("docker", "info", "--format", "{{.Driver}} {{.DockerRootDir}}").stdout.split()
    assert info == ["overlay2", "/var/lib/docker"]
    assert "factory-role-test=1" in host.run("docker", "info", "--format", "{{json .Labels}}").stdout
    # the AWS CLI works from the prefix; installer and package cache are gone
    assert host.run(f"{PREFIX}/bin/aws", "--version").stdout.startswith(f"aws-cli/{AWSCLI_VERSION} ")
    # the home directory is traversable by every user, not listable
    assert host.path("/home/ec2-user").stat().st_mode & 0o777 == 0o711
    assert host.run("sh", "-c", f"test ! -e /tmp/miniconda-installer.sh && test ! -e {PREFIX}/pkgs", check=False).returncode == 0
    mode = host.path(PREFIX).stat().st_mode & 0o777
    assert mode & 0o055 == 0o055 and not mode & 0o022, oct(mode)
    # the container check's report, fetched to this machine
    got = json.loads(report.read_text())
    assert got["container_ran"] and got["space_ok"] and got["aws_ok"], got
    assert got["aws_version"].startswith(f"aws-cli/{AWSCLI_VERSION} ") and got["size_gib"] >= 20
    assert got["image"].startswith("empty (docker import)")
    assert json.loads(host.path("/var/lib/factory/bake-check.json").read_text()) == got
    # the check image is gone again (the AMI does not carry it), and so is its tarball
    assert host.run("docker", "images", "-q", "factory-bake-check").stdout.strip() == ""
    assert host.run("test", "-e", "/tmp/factory-bake-check-empty.tar", check=False).returncode != 0
    # the stand-in, like Miniconda, brings no C library or loader of its own
    bundled = host.run("sh", "-c", f"find {PREFIX} -name 'libc.so*' -o -name 'ld-linux*' -o -name 'ld.so'").stdout
    assert bundled.strip() == "", bundled

    second = run_playbook(host, play, ev, tmp_path)
    assert second.returncode == 0, show(second)
    assert changed(second) == 0, show(second)
    assert "Restart docker" not in second.stdout


# A glibc task image with only what the prefix's python needs (what `ldd` finds for it
# and its extension modules, and the loader), and a musl-based one (Debian's musl, as
# Alpine's images are built on): both made offline with `docker import`.
GLIBC_IMAGE_SCRIPT = f"""set -e
r=$(mktemp -d)
for f in $( (ldd {PREFIX}/bin/python; find {PREFIX} -name '*.so' -exec ldd {{}} \\;) 2>/dev/null \\
           | grep -o '/[^ ]*' | grep -v '^{PREFIX}' | sort -u); do
  mkdir -p "$r$(dirname "$f")"; cp -L "$f" "$r$f"
done
tar -C "$r" -cf /tmp/glibc-task.tar . && docker import /tmp/glibc-task.tar factory-test-glibc-task:1 >/dev/null
rm -rf "$r" /tmp/glibc-task.tar
"""
MUSL_IMAGE_SCRIPT = """set -e
r=$(mktemp -d); mkdir -p "$r/lib" "$r/etc"
cp -L /lib/ld-musl-x86_64.so.1 "$r/lib/"
echo 'ID=alpine-like (Debian musl)' > "$r/etc/os-release"
tar -C "$r" -cf /tmp/musl-task.tar . && docker import /tmp/musl-task.tar factory-test-musl-task:1 >/dev/null
rm -rf "$r" /tmp/musl-task.tar
"""
needs_musl = pytest.mark.skipif(not os.path.exists("/lib/ld-musl-x86_64.so.1"), reason="needs Debian's musl (make system-deps)")


@needs_musl
@requires_buildhost
def test_the_cli_must_run_with_each_task_images_own_c_library(cloud, tmp_path):
    """The task's own images: a glibc one runs the CLI (its own libraries, none of the
    host's mounted); a musl-based one cannot, and the check fails naming the requirement,
    although the host-library check passes."""
    host, _, _ = cloud
    assert host.run("test", "-x", f"{PREFIX}/bin/aws", check=False).returncode == 0, "installed by the test above"
    host.run("sh", "-c", GLIBC_IMAGE_SCRIPT)
    host.run("sh", "-c", MUSL_IMAGE_SCRIPT)
    play = role_playbook(tmp_path, "bake_check")
    ev = {"bake_check_prefix": PREFIX, "bake_check_min_gib": 1, "ansible_python_interpreter": host.python_interpreter}

    report = tmp_path / "glibc.json"
    ok = run_playbook(host, play, {**ev, "bake_check_task_images": ["factory-test-glibc-task:1"],
                                   "bake_check_report_dest": str(report)}, tmp_path)
    assert ok.returncode == 0, show(ok)
    got = json.loads(report.read_text())
    assert got["task_images_ok"] is True
    assert [(t["image"], t["aws_ok"]) for t in got["task_images"]] == [("factory-test-glibc-task:1", True)]
    assert got["task_images"][0]["said"].startswith(f"aws-cli/{AWSCLI_VERSION} ")
    # an image the builder already had is left there
    assert host.run("docker", "images", "-q", "factory-test-glibc-task:1").stdout.strip()

    report = tmp_path / "musl.json"
    bad = run_playbook(host, play, {**ev, "bake_check_task_images": ["factory-test-glibc-task:1", "factory-test-musl-task:1"],
                                    "bake_check_report_dest": str(report)}, tmp_path)
    assert bad.returncode != 0
    text = " ".join(bad.stdout.split())
    assert "does not run in the task image(s) factory-test-musl-task:1:" in text, show(bad)
    assert "glibc 2.17 or newer in the task image (the oldest glibc Miniconda supports); musl-based images such as Alpine" in text
    got = json.loads(report.read_text())
    assert got["aws_ok"] is True and got["task_images_ok"] is False  # the host-library check alone would pass
    assert [(t["image"], t["aws_ok"]) for t in got["task_images"]] == [
        ("factory-test-glibc-task:1", True), ("factory-test-musl-task:1", False)]


@requires_buildhost
def test_devicemapper_keeps_other_options_and_replaces_the_basesize(cloud, tmp_path):
    host, _, _ = cloud
    old = (
        'DOCKER_STORAGE_OPTIONS="--storage-driver devicemapper --storage-opt dm.thinpooldev=/dev/mapper/docker-docker--pool '
        '--storage-opt dm.use_deferred_removal=true --storage-opt dm.basesize=10G --storage-opt dm.fs=ext4"'
    )
    host.run("sh", "-c", f"mkdir -p /etc/sysconfig && printf '%s\\n%s\\n' '# kept' '{old}' > /etc/sysconfig/docker-storage")
    play = role_playbook(tmp_path, "docker_storage")
    ev = {"docker_storage_driver": "devicemapper", "docker_storage_restart": False, "docker_storage_basesize_gib": 120,
          "ansible_python_interpreter": host.python_interpreter}
    first = run_playbook(host, play, ev, tmp_path)
    assert first.returncode == 0, show(first)
    text = host.path("/etc/sysconfig/docker-storage").read_text()
    assert text.splitlines()[0] == "# kept"
    line = text.splitlines()[1]
    assert line == (
        'DOCKER_STORAGE_OPTIONS="--storage-driver devicemapper --storage-opt dm.thinpooldev=/dev/mapper/docker-docker--pool '
        '--storage-opt dm.use_deferred_removal=true --storage-opt dm.fs=ext4 --storage-opt dm.basesize=120GB"'
    )
    assert text.count("dm.basesize") == 1
    again = run_playbook(host, play, ev, tmp_path)
    assert again.returncode == 0 and changed(again) == 0, show(again)
    # a new size replaces the old one rather than adding a second
    bigger = run_playbook(host, play, {**ev, "docker_storage_basesize_gib": 200}, tmp_path)
    assert bigger.returncode == 0 and changed(bigger) == 1, show(bigger)
    text = host.path("/etc/sysconfig/docker-storage").read_text()
    assert text.count("dm.basesize") == 1 and "dm.basesize=200GB" in text and "dm.fs=ext4" in text


@requires_buildhost
def test_devicemapper_creates_the_file_when_missing(cloud, tmp_path):
    host, _, _ = cloud
    play = role_playbook(tmp_path, "docker_storage")
    ev = {"docker_storage_driver": "devicemapper", "docker_storage_restart": False, "docker_storage_basesize_gib": 50,
          "docker_storage_sysconfig_file": "/etc/sysconfig/docker-storage-new",
          "ansible_python_interpreter": host.python_interpreter}
    p = run_playbook(host, play, ev, tmp_path)
    assert p.returncode == 0, show(p)
    assert host.path("/etc/sysconfig/docker-storage-new").read_text() == 'DOCKER_STORAGE_OPTIONS="--storage-opt dm.basesize=50GB"\n'


@requires_buildhost
def test_checksum_mismatch_fails_and_installs_nothing(cloud, tmp_path):
    host, mirror, _ = cloud
    play = role_playbook(tmp_path, "miniconda_awscli")
    ev = {**installer_vars(mirror, "/opt/mismatch"), "miniconda_awscli_installer_checksum": "sha256:" + "0" * 64,
          "ansible_python_interpreter": host.python_interpreter}
    p = run_playbook(host, play, ev, tmp_path)
    assert p.returncode != 0
    assert "checksum" in p.stdout.lower(), show(p)
    assert host.run("test", "-e", "/opt/mismatch/bin/conda", check=False).returncode != 0


@requires_buildhost
def test_overlay2_refuses_a_data_root_smaller_than_the_volume(cloud, tmp_path):
    host, _, _ = cloud
    play = role_playbook(tmp_path, "docker_storage")
    p = run_playbook(host, play, {"docker_storage_volume_gib": 1_000_000,
                                  "ansible_python_interpreter": host.python_interpreter}, tmp_path)
    assert p.returncode != 0
    assert "smaller than the sized volume" in p.stdout, show(p)


def failed_bake_check(host, tmp_path, prefix: str) -> dict:
    """Run the bake_check role alone against `prefix`; it must fail the play. Its report."""
    report = tmp_path / "bad.json"
    p = run_playbook(host, role_playbook(tmp_path, "bake_check"),
                     {"bake_check_prefix": prefix, "bake_check_min_gib": 1, "bake_check_report_dest": str(report),
                      "ansible_python_interpreter": host.python_interpreter}, tmp_path)
    assert p.returncode != 0
    assert "The bake check failed" in p.stdout, show(p)
    return json.loads(report.read_text())


@requires_buildhost
def test_bake_check_fails_when_the_cli_is_missing(cloud, tmp_path):
    """A prefix with Miniconda's python but no AWS CLI: the space is measured (by that
    python, in the empty image with the host's C library), the CLI check fails the play."""
    from factory.local.builder.mirror import standin_installer

    host, _, _ = cloud
    # Copied in, not run from the checkout: the build host has its own /tmp, and a clone
    # may live under this machine's /tmp (as CI's does).
    host.run("sh", "-c", "cat > /root/standin-installer.sh", input=standin_installer().read_text())
    host.run("sh", "-c", "rm -rf /opt/no-aws && sh /root/standin-installer.sh -b -p /opt/no-aws >/dev/null")
    got = failed_bake_check(host, tmp_path, "/opt/no-aws")
    assert got["aws_ok"] is False and got["space_ok"] is True and got["size_gib"] >= 1, got
    assert host.run("docker", "images", "-q", "factory-bake-check").stdout.strip() == ""


@requires_buildhost
def test_bake_check_fails_when_the_prefix_is_missing(cloud, tmp_path):
    """--mount refuses a missing prefix (nothing is created on the host), and the play fails."""
    host, _, _ = cloud
    got = failed_bake_check(host, tmp_path, "/opt/nothing-here")
    assert got["container_ran"] is False and got["aws_ok"] is False and got["space_ok"] is False
    assert host.run("test", "-e", "/opt/nothing-here", check=False).returncode != 0


@requires_buildhost
def test_generalize_removes_the_builders_logs_leases_temporary_files_and_caches(cloud, tmp_path):
    """Issue 22 §9: what amazon-ecs-ami's cleanup removes and generalize did not: the
    login log with Packer's address, the system and audit logs, the login records (emptied
    in place), DHCP leases, /tmp and /var/tmp, dnf/yum caches and history, the SSM agent's
    logs, rsyslog's journal position, /etc/hostname. A second run on a host that has none
    of them (a fresh instance of the AMI) passes too."""
    host, _, _ = cloud
    host.boot()
    planted = {
        "/var/log/secure": "sshd[812]: Accepted publickey for ec2-user from 203.0.113.7 port 50022",
        "/var/log/secure-20261201": "sshd[3]: Accepted publickey for ec2-user from 203.0.113.7",
        "/var/log/messages": "builder messages", "/var/log/cron": "cron", "/var/log/boot.log": "boot",
        "/var/log/audit/audit.log": "type=USER_LOGIN addr=203.0.113.7",
        "/var/lib/dhclient/dhclient--eth0.lease": "lease { fixed-address 10.0.0.12; }",
        "/var/lib/dhcp/dhclient.eth0.leases": "lease { fixed-address 10.0.0.12; }",
        "/tmp/packer-shell-1234": "uploaded by Packer", "/tmp/ansible-work/x": "x",
        "/var/tmp/factory-upload": "y", "/var/tmp/.hidden": "z",
        "/var/cache/dnf/amazonlinux-abc/repodata/primary.xml.gz": "cache",
        "/var/cache/yum/x86_64/2/timedhosts": "cache",
        "/var/lib/dnf/history.sqlite": "history", "/var/lib/yum/history/2026-12-01/1": "history",
        "/var/log/amazon/ssm/amazon-ssm-agent.log": "session i-0abc started by arn:aws:sts::123:assumed-role",
        "/var/lib/rsyslog/imjournal.state": "cursor",
        "/etc/hostname": "ip-10-0-0-12.ec2.internal",
    }
    for path, text in planted.items():
        host.run("sh", "-c", f"mkdir -p \"$(dirname {path})\" && printf '%s' \"$1\" > {path}", "-", text)
    host.run("sh", "-c", "printf 'login record' > /var/log/wtmp && chmod 0664 /var/log/wtmp && "
                         "printf 'failed' > /var/log/btmp && chmod 0600 /var/log/btmp")
    keep = {"/var/log/docker.log", "/var/lib/factory"}  # not the instance's: left as they are
    host.run("sh", "-c", "mkdir -p /var/lib/factory && echo '{}' > /var/lib/factory/kept.json")
    play = role_playbook(tmp_path, "generalize")
    ev = {"ansible_python_interpreter": host.python_interpreter}
    first = run_playbook(host, play, ev, tmp_path)
    assert first.returncode == 0, show(first)
    left = [p for p in planted if host.run("test", "-e", p, check=False).returncode == 0]
    assert left == [], left
    for d in ("/tmp", "/var/tmp", "/var/cache/dnf", "/var/log/amazon/ssm", "/var/log/audit"):
        assert host.run("sh", "-c", f"ls -A {d} 2>/dev/null", check=False).stdout.strip() == "", d
    assert host.run("test", "-d", "/tmp", check=False).returncode == 0  # emptied, not removed
    # the login records are emptied in place, their modes kept
    assert host.run("stat", "-c", "%s %a", "/var/log/wtmp", "/var/log/btmp").stdout.split("\n")[:2] == ["0 664", "0 600"]
    assert host.run("cat", "/var/lib/factory/kept.json").stdout.strip() == "{}" and keep
    # a fresh instance with none of these files: nothing to remove, and no failure
    host.boot()
    host.run("sh", "-c", "rm -rf /var/log/wtmp /var/log/btmp /var/log/lastlog /var/log/audit /var/lib/dhclient")
    again = run_playbook(host, play, ev, tmp_path)
    assert again.returncode == 0, show(again)
    host.boot()  # leave the host usable


class _Registry:
    """A registry on loopback speaking the part of the distribution API `docker pull`
    reads first (Docker uses plain HTTP for a 127.0.0.0/8 registry): a private
    repository (401 UNAUTHORIZED), a missing one (404 MANIFEST_UNKNOWN), and one whose
    manifest list has no variant for this machine (only linux/s390x)."""

    def __init__(self):
        import hashlib
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        listing = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
                              "manifests": [{"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "size": 7,
                                             "digest": "sha256:" + "0" * 64,
                                             "platform": {"architecture": "s390x", "os": "linux"}}]}).encode()
        routes = {
            "/v2/": (200, "application/json", b"{}"),
            "/v2/private/tool/manifests/1": (401, "application/json", json.dumps(
                {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}).encode()),
            "/v2/missing/tool/manifests/1": (404, "application/json", json.dumps(
                {"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]}).encode()),
            "/v2/otherarch/tool/manifests/1": (200, "application/vnd.docker.distribution.manifest.list.v2+json", listing),
        }
        # Docker reads the tag's digest (HEAD), then the list by that digest.
        by_digest = f"/v2/otherarch/tool/manifests/sha256:{hashlib.sha256(listing).hexdigest()}"
        routes[by_digest] = routes["/v2/otherarch/tool/manifests/1"]
        self.requests: list[str] = []
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def answer(self, body: bool) -> None:
                registry.requests.append(f"{self.command} {self.path}")
                status, kind, data = routes.get(self.path, (404, "application/json", b'{"errors":[{"code":"NAME_UNKNOWN"}]}'))
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Docker-Distribution-API-Version", "registry/2.0")
                self.send_header("Docker-Content-Digest", "sha256:" + hashlib.sha256(data).hexdigest())
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def do_GET(self):
                self.answer(True)

            def do_HEAD(self):
                self.answer(False)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _image_archive(tag: str, architecture: str) -> str:
    """A `docker save` archive (base64) of an image with one empty layer, built for `architecture`."""
    import base64
    import hashlib

    layer = tar_of({})
    config = json.dumps({"architecture": architecture, "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer).hexdigest()]}}).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [tag], "Layers": ["layer/layer.tar"]}]).encode()
    return base64.b64encode(tar_of({"layer/layer.tar": layer, config_name: config, "manifest.json": manifest})).decode()


@requires_buildhost
def test_a_task_image_that_cannot_be_pulled_is_told_apart_from_the_c_library_check(cloud, tmp_path):
    """Issue 22 §10: the bake check pulls the task images first and says why a pull failed
    (the registry wants credentials, the image is not there, no variant for this
    architecture, an image on the builder built for another one), never "C library"; an
    ECR image is pulled after logging in with the task's AWS CLI (here there is none, so
    the login fails and says so); Docker keeps no image the check pulled."""
    host, _, _ = cloud
    registry = _Registry()
    try:
        host.run("sh", "-c", "base64 -d > /root/s390x.tar && docker load -i /root/s390x.tar && rm /root/s390x.tar",
                 input=_image_archive("factory-test-s390x:1", "s390x"))
        assert host.run("docker", "image", "inspect", "--format", "{{.Os}}/{{.Architecture}}",
                        "factory-test-s390x:1").stdout.strip() == "linux/s390x"
        images = [f"{registry.host}/private/tool:1", f"{registry.host}/missing/tool:1", f"{registry.host}/otherarch/tool:1",
                  "123456789012.dkr.ecr.us-east-1.amazonaws.com/tool:1", "factory-test-s390x:1"]
        report = tmp_path / "report.json"
        play = run_playbook(host, role_playbook(tmp_path, "bake_check"), {
            "bake_check_prefix": "/opt/nothing-here", "bake_check_min_gib": 1, "bake_check_report_dest": str(report),
            "bake_check_task_images": images, "ansible_python_interpreter": host.python_interpreter}, tmp_path)
    finally:
        registry.stop()
    assert play.returncode != 0
    text = " ".join(play.stdout.split())
    assert "does not run in the task image" not in text and "glibc" not in text, show(play)
    got = {t["image"]: t for t in json.loads(report.read_text())["task_images"]}
    assert {i: (got[i]["pulled"], got[i].get("pull_problem")) for i in images} == {
        images[0]: (False, "credentials"), images[1]: (False, "not_found"), images[2]: (False, "architecture"),
        images[3]: (False, "credentials"), images[4]: (False, "architecture")}, registry.requests
    assert "ECR login" in got[images[3]]["said"] and "image platform linux/s390x" in got[images[4]]["said"]
    assert f"The task image {images[0]} cannot run on the builder: not pulled (credentials): the registry refused" in text
    assert "ecr:GetAuthorizationToken" in text and "check the name in nextflow.containers" in text
    assert any(r.startswith("GET /v2/private/tool/manifests/1") or r.startswith("HEAD /v2/private/tool/manifests/1")
               for r in registry.requests), registry.requests
    # nothing pulled stays; the image the builder had stays; no ECR login left behind
    assert host.run("docker", "images", "-q", "factory-test-s390x:1").stdout.strip()
    assert host.run("sh", "-c", "cat /root/.docker/config.json 2>/dev/null", check=False).stdout.count("amazonaws") == 0
    host.run("docker", "rmi", "factory-test-s390x:1")
