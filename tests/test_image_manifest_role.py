"""The image_manifest role, run for real on the throwaway build host: what it records is
what the host really has (its kernel, its Docker engine, containerd, its dpkg database),
read by Ansible's package_facts or, where Python has no bindings for the package manager,
by the package manager's own query."""

from __future__ import annotations

import json
import re

import pytest
from buildhost_fixtures import changed, requires_buildhost, role_playbook, run_playbook, show, start_host

pytestmark = requires_buildhost

ON_IMAGE = "/etc/factory/image-manifest.json"
APT_BINDINGS = "/usr/lib/python3/dist-packages/apt"


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    h = start_host(tmp_path_factory.mktemp("manifest") / "host")
    try:
        yield h
    finally:
        h.stop(remove=True)


def run_role(host, tmp_path, **extra):
    dest = tmp_path / "fetched" / "image-manifest.json"
    ev = {
        "ansible_python_interpreter": host.python_interpreter,
        "image_manifest_dest": str(dest),
        "image_manifest_labels": {"task": "salmon-quant", "base_ami": "ami-0123456789abcdef0", "image_hash": "h" * 64},
        "image_manifest_awscli_prefix": "/opt/no-miniconda-here",
        **extra,
    }
    proc = run_playbook(host, role_playbook(tmp_path, "image_manifest"), ev, tmp_path)
    return proc, dest


def task_status(proc, name: str) -> str:
    """How a task of the role ended in ansible-playbook's output: ok, changed, skipping, failed."""
    block = proc.stdout.split(f"TASK [image_manifest : {name}]", 1)[1].split("TASK [", 1)[0]
    return re.search(r"^(ok|changed|skipping|failed|fatal):", block, re.M).group(1)


def installed_dpkg(host) -> set[tuple[str, str, str]]:
    """(name, version, architecture) of every package dpkg has installed on the host."""
    out = host.run("dpkg-query", "--show", "--showformat=${db:Status-Abbrev} ${Package} ${Version} ${Architecture}\n").stdout
    rows = [line.split() for line in out.splitlines()]
    return {(name, version, arch) for status, name, version, arch in rows if status[1] not in "nc"}


def listed(manifest) -> set[tuple[str, str, str]]:
    return {(p["name"], p["version"], p["arch"]) for p in manifest["packages"]["list"]}


@pytest.fixture(scope="module")
def first(host, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("first")
    proc, dest = run_role(host, tmp)
    assert proc.returncode == 0, show(proc)
    return proc, json.loads(dest.read_text()), dest, tmp


def test_the_manifest_records_what_the_host_really_has(host, first):
    _, m, _, _ = first
    assert m["schema"] == "factory/image-manifest/1"
    assert (m["task"], m["base_ami"], m["image_hash"]) == ("salmon-quant", "ami-0123456789abcdef0", "h" * 64)
    assert m["kernel"] == host.run("uname", "-r").stdout.strip()
    assert m["os"]["architecture"] == host.run("uname", "-m").stdout.strip()
    os_release = dict(
        line.split("=", 1) for line in host.run("cat", "/etc/os-release").stdout.splitlines() if "=" in line
    )
    assert m["os"]["name"] == os_release["NAME"].strip('"').split()[0]  # "Debian GNU/Linux" -> Debian
    assert m["os"]["version"].split(".")[0] == os_release["VERSION_ID"].strip('"')
    # Docker: the engine the host runs, as the role left it, on its data root
    engine = host.run("docker", "info", "--format", "{{.ServerVersion}} {{.Driver}} {{.DockerRootDir}}").stdout.split()
    assert [m["docker"]["version"], m["docker"]["storage_driver"], m["docker"]["data_root"]] == engine
    df_kib = int(host.run("df", "-Pk", engine[2]).stdout.splitlines()[-1].split()[1])
    assert m["docker"]["data_root_size_gib"] == round(df_kib / 1048576, 1) > 0
    containerd = host.run("containerd", "--version").stdout.split()
    assert m["containerd"]["version"] == containerd[2]
    # the whole dpkg database, name, version and architecture
    assert m["packages"]["manager"] == "dpkg"
    assert listed(m) == installed_dpkg(host)
    assert m["packages"]["count"] == len(m["packages"]["list"]) > 100
    names = [p["name"] for p in m["packages"]["list"]]
    assert names == sorted(names)
    # ... which says the same as the programs: Debian's docker.io and containerd packages
    versions = {p["name"]: p["version"] for p in m["packages"]["list"]}
    assert versions["docker.io"].startswith(m["docker"]["version"])
    assert versions["containerd"].startswith(m["containerd"]["version"])
    # no ECS agent package on this host, no Miniconda in that prefix, no bake check ran: null
    assert "ecs-init" not in versions and m["ecs_agent"] is None
    assert m["awscli"] == {"path": "/opt/no-miniconda-here/bin/aws", "version": None}
    assert m["miniconda"] == {"prefix": "/opt/no-miniconda-here", "version": None}
    assert m["bake_check"] is None


def test_the_file_on_the_image_is_the_fetched_one_and_a_second_run_changes_nothing(host, first, tmp_path):
    proc, m, dest, _ = first
    on_image = host.path(ON_IMAGE)
    assert on_image.read_text() == dest.read_text() and json.loads(on_image.read_text()) == m
    assert on_image.stat().st_mode & 0o777 == 0o644
    assert changed(proc) > 0
    assert task_status(proc, "List the packages with dpkg-query where package_facts cannot") == "skipping"  # package_facts read them
    again, again_dest = run_role(host, tmp_path)
    assert again.returncode == 0, show(again)
    assert changed(again) == 0, show(again)
    assert again_dest.read_text() == dest.read_text()


def test_the_bake_check_report_and_the_ecs_agent_package_are_recorded(host, tmp_path):
    """A bake check report on the builder is copied in as it is; an ECS agent package's
    version (its release left out) is the agent's."""
    report = {"container_ran": True, "space_ok": True, "aws_ok": True, "size_gib": 30.0, "aws_version": "aws-cli/1.32.27"}
    host.run("sh", "-c", "mkdir -p /var/lib/factory && cat > /var/lib/factory/bake-check.json", input=json.dumps(report))
    try:
        # dpkg's own package stands in for the agent's (this host has no ecs-init)
        proc, dest = run_role(host, tmp_path, image_manifest_ecs_agent_packages=["ecs-init", "dpkg"])
    finally:
        host.run("rm", "-f", "/var/lib/factory/bake-check.json")
    assert proc.returncode == 0, show(proc)
    m = json.loads(dest.read_text())
    assert m["bake_check"] == report
    dpkg_version = host.run("dpkg-query", "--show", "--showformat=${Version}", "dpkg").stdout
    assert m["ecs_agent"] == {"version": dpkg_version.rsplit("-", 1)[0], "package": f"dpkg {dpkg_version}"}


def test_without_python_bindings_dpkg_query_lists_the_same_packages(host, first, tmp_path):
    """As on Amazon Linux 2, whose python3 has no rpm module: package_facts cannot read the
    database, and the package manager's own query gives the same list."""
    _, m, _, _ = first
    hidden = APT_BINDINGS + ".hidden-by-test"
    host.run("mv", APT_BINDINGS, hidden)
    try:
        proc, dest = run_role(host, tmp_path)
    finally:
        host.run("mv", hidden, APT_BINDINGS)
    assert proc.returncode == 0, show(proc)
    assert task_status(proc, "List the packages with dpkg-query where package_facts cannot") == "ok"
    fallback = json.loads(dest.read_text())
    assert fallback["packages"] == m["packages"]
