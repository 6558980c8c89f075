"""The throwaway build host and the mirror: real sshd, real dockerd, an overlay root that
keeps every write away from this machine, and a stop that leaves nothing behind."""

from __future__ import annotations

import glob
import hashlib
import os
import subprocess
import urllib.request
from pathlib import Path

import pytest
from buildhost_fixtures import requires_buildhost, start_host


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    h = start_host(tmp_path_factory.mktemp("bh") / "host")
    try:
        yield h
    finally:
        h.stop(remove=True)


def ssh(host, command: str) -> subprocess.CompletedProcess:
    return subprocess.run(host.ssh_args() + [command], capture_output=True, text=True, timeout=60)


@requires_buildhost
def test_ssh_by_key_as_root_with_sftp(host, tmp_path):
    p = ssh(host, "id -u; cat /proc/1/comm")
    assert p.returncode == 0, p.stderr
    assert p.stdout.split()[0] == "0"
    local = tmp_path / "f.txt"
    local.write_text("over sftp\n")
    sftp = subprocess.run(
        ["sftp", "-b", "-", "-i", str(host.private_key_file), "-P", str(host.ssh_port),
         "-o", f"UserKnownHostsFile={host.known_hosts_file}", "-o", "BatchMode=yes", f"root@{host.ssh_host}"],
        input=f"put {local} /root/f.txt\n", capture_output=True, text=True, timeout=60,
    )
    assert sftp.returncode == 0, sftp.stderr
    assert host.path("/root/f.txt").read_text() == "over sftp\n"
    # a password or another key is refused
    other = subprocess.run(
        ["ssh", "-p", str(host.ssh_port), "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-i", "/dev/null",
         "-o", f"UserKnownHostsFile={host.known_hosts_file}", f"root@{host.ssh_host}", "true"],
        capture_output=True, text=True, timeout=60,
    )
    assert other.returncode != 0


def _login(host, algorithms: str) -> subprocess.CompletedProcess:
    """ssh with the host's key, signing only with the given public key algorithms."""
    args = host.ssh_args()
    return subprocess.run(args[:1] + ["-o", f"PubkeyAcceptedAlgorithms={algorithms}"] + args[1:] + ["true"],
                          capture_output=True, text=True, timeout=60)


@requires_buildhost
def test_sshd_refuses_sha1_rsa_signatures_as_amazon_linux_2023_does(host):
    """The key is RSA, as Packer's temporary key pair on AWS is; a client that signs it with
    SHA-1 (`ssh-rsa`) is refused, one that signs with rsa-sha2-256 logs in (Debian's Packer
    1.6.6 does; see /work/shared/notes/local-cloud.md)."""
    kind = subprocess.run(["ssh-keygen", "-l", "-f", str(host.private_key_file)], capture_output=True, text=True)
    assert kind.stdout.rstrip().endswith("(RSA)"), kind.stdout
    assert _login(host, "rsa-sha2-256").returncode == 0
    sha1 = _login(host, "ssh-rsa")
    assert sha1.returncode != 0 and "Permission denied" in sha1.stderr, sha1.stderr
    # stated in the host's own sshd settings, not left to this OpenSSH's defaults
    effective = host.run("/usr/sbin/sshd", "-T", "-f", "/etc/factory-buildhost/sshd_config").stdout
    accepted = [line.split()[1].split(",") for line in effective.splitlines()
                if line.split()[0] in ("pubkeyacceptedalgorithms", "hostkeyalgorithms", "casignaturealgorithms")]
    assert len(accepted) == 3 and not [a for a in accepted if "ssh-rsa" in a or "ssh-rsa-cert-v01@openssh.com" in a]


@requires_buildhost
def test_boot_makes_a_generalized_host_a_new_instance_again(host):
    """After a bake removed its host key and authorized key (and stopped Docker), the host
    takes no login; boot() is a new instance's first boot: login, Docker, a new machine id,
    and the per-instance state an ECS-optimized instance carries."""
    old_id = host.run("cat", "/etc/machine-id").stdout.strip()
    host.run("sh", "-c", "rm -f /etc/ssh/ssh_host_* /root/.ssh/authorized_keys && /etc/init.d/docker stop")
    assert ssh(host, "true").returncode != 0
    host.boot()
    assert ssh(host, "true").returncode == 0
    assert host.run("docker", "info", "--format", "{{.Driver}}").stdout.strip() == "overlay2"
    new_id = host.run("cat", "/etc/machine-id").stdout.strip()
    assert len(new_id) == 32 and new_id != old_id
    for path in ("/var/lib/ecs/data/agent.db", "/var/log/ecs/ecs-agent.log", "/var/lib/cloud/instance",
                 f"/var/log/journal/{new_id}/system.journal"):
        assert host.run("test", "-e", path, check=False).returncode == 0, path


@requires_buildhost
def test_writes_stay_in_the_throwaway_root(host):
    marker = f"/etc/factory-buildhost-test-{os.getpid()}"
    assert ssh(host, f"echo inside > {marker} && mkdir -p /home/ec2-user && touch /home/ec2-user/x").returncode == 0
    assert not Path(marker).exists()  # this machine's /etc is untouched
    assert not Path("/home/ec2-user/x").exists()
    assert host.path(marker).read_text() == "inside\n"
    assert host.path("/home/ec2-user/x").exists()


@requires_buildhost
def test_real_docker_with_its_data_root_outside_the_overlay(host):
    out = host.run("docker", "info", "--format", "{{.Driver}} {{.DockerRootDir}}").stdout.split()
    assert out == ["overlay2", "/var/lib/docker"]
    assert (host.docker_data_dir / "overlay2").is_dir()  # Docker's data is in the bind-mounted dir
    # a restart through the root's init script, as ansible.builtin.service does here
    host.run("/etc/init.d/docker", "restart")
    host.run("sh", "-c", "for i in $(seq 100); do docker info >/dev/null 2>&1 && exit 0; sleep 0.1; done; exit 1")
    # a container runs from a locally imported busybox image
    script = (
        "set -e; d=$(mktemp -d); mkdir $d/bin; cp /bin/busybox $d/bin/; ln -s busybox $d/bin/sh; "
        "tar -C $d -cf /tmp/r.tar .; docker import /tmp/r.tar bh-test:1 >/dev/null; "
        "docker run --rm --network none bh-test:1 sh -c 'echo from-container'"
    )
    assert host.run("sh", "-c", script).stdout.strip() == "from-container"


@requires_buildhost
def test_stop_leaves_no_process_mount_or_cgroup(tmp_path):
    h = start_host(tmp_path / "host")
    pids = [h.pid, h.init_pid]
    inside = [int(p) for p in h.run("sh", "-c", "ls /proc | grep -E '^[0-9]+$'").stdout.split()]
    assert len(inside) >= 3  # init, sshd, dockerd, containerd...
    h.stop()
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    assert str(tmp_path) not in Path("/proc/self/mountinfo").read_text()
    assert not glob.glob(f"/sys/fs/cgroup/*{h.cgroup_parent}")
    assert not h.alive()
    assert h.path("/etc/default/docker").exists()  # the upper dir stays for inspection...
    h.stop(remove=True)
    assert not (tmp_path / "host").exists()  # ...until removed


def test_mirror_serves_the_standin_with_its_sha256(tmp_path):
    from factory.local.builder.mirror import Mirror, standin_installer

    m = Mirror.start(tmp_path / "mirror")
    try:
        body = urllib.request.urlopen(m.installer_url, timeout=5).read()
        assert hashlib.sha256(body).hexdigest() == m.installer_sha256
        assert body == standin_installer().read_bytes()
        assert Mirror.load(tmp_path / "mirror").port == m.port
    finally:
        m.stop()
    assert not m.alive()


@requires_buildhost
def test_standin_installer_behaves_like_miniconda(tmp_path):
    from factory.local.builder.mirror import standin_installer

    inst = standin_installer()
    no_batch = subprocess.run(["sh", str(inst), "-p", str(tmp_path / "p")], capture_output=True, text=True)
    assert no_batch.returncode != 0 and "batch mode" in no_batch.stderr
    prefix = tmp_path / "mc"
    ok = subprocess.run(["sh", str(inst), "-b", "-p", str(prefix)], capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert (prefix / "bin" / "conda").exists()
    again = subprocess.run(["sh", str(inst), "-b", "-p", str(prefix)], capture_output=True, text=True)
    assert again.returncode != 0 and "already exists" in again.stderr
    bad = subprocess.run([str(prefix / "bin" / "conda"), "install", "-y", "numpy"], capture_output=True, text=True)
    assert bad.returncode != 0
    for spec in ("awscli=1.3;rm", "awscli="):
        refused = subprocess.run([str(prefix / "bin" / "conda"), "install", "-y", spec], capture_output=True, text=True)
        assert refused.returncode != 0 and "not a version" in refused.stderr, refused.stderr
    # Like Miniconda: a real interpreter, no C library or loader of its own, nothing
    # pointing outside the prefix (it must run where only the prefix and the host's
    # libraries are mounted).
    assert not (prefix / "bin" / "python").read_bytes().startswith(b"#!")
    assert not [p for p in prefix.rglob("*") if p.name.startswith(("libc.so", "ld-linux")) or p.name == "ld.so"]
    for link in [p for p in prefix.rglob("*") if p.is_symlink()]:
        assert link.resolve().is_relative_to(prefix.resolve()), link


def _site_files(prefix: Path) -> set[str]:
    """What an install put in the prefix's site-packages, compiled bytecode aside (its
    header holds each source's mtime, so two pip runs differ there too)."""
    site = next((prefix / "lib").glob("python3.*")) / "site-packages"
    return {str(p.relative_to(site)) for p in site.rglob("*") if "__pycache__" not in p.parts}


@requires_buildhost
def test_parallel_local_clouds_build_the_package_cache_entry_once(tmp_path):
    """Three local clouds starting at once (xdist workers) fill one cache entry: one pip
    install under the lock, the entry whole for each, no temporary file left."""
    import concurrent.futures

    from factory.local.builder import conda_pkgs

    pkgs = tmp_path / "pkgs"
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        entries = list(pool.map(lambda _: conda_pkgs.ensure("1.32.27", directory=pkgs), range(3)))
    entry = pkgs / f"{conda_pkgs.key('1.32.27')}.tar"
    assert entries == [entry] * 3
    assert sorted(p.name for p in pkgs.iterdir()) == [".lock", entry.name]
    listed = subprocess.run(["tar", "-tf", str(entry)], capture_output=True, text=True, check=True).stdout.split()
    assert "./awscli/__init__.py" in listed and "./botocore/__init__.py" in listed
    (tmp_path / "a-file").write_text("")
    assert conda_pkgs.ensure("1.32.27", directory=tmp_path / "a-file" / "pkgs") is None  # cannot be built: bakes run pip


@requires_buildhost
def test_standin_conda_installs_the_pinned_awscli(tmp_path):
    """`conda install awscli=X` (or ==X) installs exactly that release; `aws` is a Python
    script run by the prefix's own python, working with an empty environment. Built once
    with pip and packed into the package cache, the same install is unpacked from there:
    the same files and the same `aws`, each top-level entry replacing an older release's."""
    from factory.local.builder import conda_pkgs
    from factory.local.builder.mirror import standin_installer

    pkgs = tmp_path / "pkgs"
    env = dict(os.environ, FACTORY_STANDIN_CONDA_PKGS=str(pkgs))

    def installed(name: str) -> Path:
        prefix = tmp_path / name
        ok = subprocess.run(["sh", str(standin_installer()), "-b", "-p", str(prefix)], capture_output=True, text=True,
                            env=env, timeout=300)
        assert ok.returncode == 0, ok.stderr
        return prefix

    def conda_install(prefix: Path, *args: str, publish: bool = False) -> subprocess.CompletedProcess:
        run_env = dict(env, FACTORY_STANDIN_CONDA_PUBLISH="1") if publish else env
        inst = subprocess.run([str(prefix / "bin" / "conda"), "install", *args], capture_output=True, text=True,
                              env=run_env, timeout=600)
        assert inst.returncode == 0, inst.stderr
        return inst

    def aws_says(prefix: Path) -> str:
        aws = subprocess.run([str(prefix / "bin" / "aws"), "--version"], capture_output=True, text=True, env={}, timeout=60)
        return aws.stdout + aws.stderr

    built = installed("mc")
    first = conda_install(built, "-c", "conda-forge", "-y", "awscli=1.32.27", publish=True)
    assert "package cache" not in first.stdout  # an empty cache: pip built it
    assert (built / "bin" / "aws").read_text().startswith(f"#!{built}/bin/python\n")
    assert aws_says(built).startswith("aws-cli/1.32.27 "), aws_says(built)
    key = conda_pkgs.key("1.32.27")
    assert sorted(p.name for p in pkgs.iterdir() if not p.name.startswith(".")) == [f"{key}.tar"]
    assert conda_pkgs.ensure("1.32.27", directory=pkgs) == pkgs / f"{key}.tar"  # found, not built again

    # The older release with pip, then the cached one over it (as the role upgrades a prefix).
    unpacked = installed("mc2")
    conda_install(unpacked, "-y", "awscli==1.32.26")
    assert aws_says(unpacked).startswith("aws-cli/1.32.26 "), aws_says(unpacked)
    second = conda_install(unpacked, "-y", "awscli=1.32.27")
    assert f"unpacked from the package cache ({key})" in second.stdout
    assert (unpacked / "bin" / "aws").read_text().startswith(f"#!{unpacked}/bin/python\n")
    assert aws_says(unpacked).startswith("aws-cli/1.32.27 "), aws_says(unpacked)
    # Every file of the built install, and of 1.32.26 only its two dist-info folders, which
    # pip --target --upgrade leaves as well (it replaces the top-level entries it installs).
    assert _site_files(built) <= _site_files(unpacked)
    left = {f.split("/")[0] for f in _site_files(unpacked) - _site_files(built)}
    assert left == {"awscli-1.32.26.dist-info", "botocore-1.34.26.dist-info"}, left

    # The pip path over a prefix with another release: 1.32.26 on the cached 1.32.27.
    conda_install(built, "-y", "awscli==1.32.26")
    assert aws_says(built).startswith("aws-cli/1.32.26 "), aws_says(built)
