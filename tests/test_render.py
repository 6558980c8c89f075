"""`factory render`: the rendered folder passes real `packer validate` / `packer fmt -check`,
parses with python-hcl2 to the expected values, never opens the builder to the world, and
renders byte-identically."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from factory import render as render_mod
from factory.errors import UsageError
from factory.render import RENDER_STAMP, BuildTarget, render
from factory.sizing import size_task
from factory.spec import find_spec
from tests.conftest import SPECS

TASKS = sorted(p.stem for p in SPECS.glob("*.yaml"))
BASE_AMI = "ami-0123456789abcdef0"
CALLER = "203.0.113.7/32"
VENV_BIN = str(Path(sys.executable).parent)

needs_packer = pytest.mark.skipif(shutil.which("packer") is None, reason="Packer is not installed")


def packer(folder: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", CHECKPOINT_DISABLE="1")
    return subprocess.run(["packer", *args], cwd=folder, capture_output=True, text=True, env=env, timeout=120)


def unq(v):
    """python-hcl2 keeps the quotes of strings and keys; drop them."""
    if isinstance(v, str) and len(v) >= 2 and v[0] == v[-1] == '"':
        return v[1:-1]
    if isinstance(v, dict):
        return {unq(k): unq(x) for k, x in v.items()}
    if isinstance(v, list):
        return [unq(x) for x in v]
    return v


def load_hcl(path: Path) -> dict:
    import hcl2

    with open(path) as f:
        return unq(hcl2.load(f))


@pytest.fixture(autouse=True)
def caller_cidr(monkeypatch):
    monkeypatch.setenv(render_mod.CALLER_CIDR_ENV, CALLER)


def _render(task: str, out: Path, **kw):
    spec = find_spec(task, SPECS)
    return spec, render(spec, size_task(spec), BASE_AMI, out, **kw)


@needs_packer
@pytest.mark.parametrize("task", TASKS)
def test_every_spec_renders_a_folder_packer_validates(task, tmp_path):
    spec, result = _render(task, tmp_path / "out")
    folder = result.out_dir
    v = packer(folder, "validate", ".")
    assert v.returncode == 0, v.stdout + v.stderr
    f = packer(folder, "fmt", "-check", ".")
    assert f.returncode == 0, f"packer fmt -check: {f.stdout}{f.stderr}"
    # self-contained: the same folder validates after moving elsewhere
    moved = tmp_path / "elsewhere" / "deeper"
    shutil.move(str(folder), moved)
    v2 = packer(moved, "validate", ".")
    assert v2.returncode == 0, v2.stdout + v2.stderr


@pytest.mark.parametrize("task", TASKS)
def test_no_rendered_file_opens_the_builder_to_the_world(task, tmp_path):
    _, result = _render(task, tmp_path / "out", packer_version=(1, 10, 0))
    for rel in result.files:
        assert "0.0.0.0/0" not in (result.out_dir / rel).read_text(), rel
    assert result.variables["builder_cidrs"] == [CALLER]


@needs_packer
def test_packer_refuses_a_world_open_builder(tmp_path):
    """The variable's validation is real: a wide range fails `packer validate`."""
    _, result = _render("salmon-quant", tmp_path / "out")
    pkrvars = result.variables_file
    pkrvars.write_text(pkrvars.read_text().replace(CALLER, "0.0.0.0/0"))
    v = packer(result.out_dir, "validate", ".")
    assert v.returncode != 0
    assert "builder_cidrs" in v.stdout + v.stderr


def test_render_refuses_a_world_open_cidr(tmp_path, monkeypatch):
    monkeypatch.setenv(render_mod.CALLER_CIDR_ENV, "0.0.0.0/0")
    with pytest.raises(UsageError, match="too wide"):
        _render("salmon-quant", tmp_path / "out")


@pytest.mark.parametrize("cidr", ["::/0", "2001:db8::/20"])
def test_render_refuses_a_wide_ipv6_cidr(tmp_path, monkeypatch, cidr):
    """An IPv6 /16 is a sixteenth of the internet: IPv6 ranges must be /48 or narrower."""
    monkeypatch.setenv(render_mod.CALLER_CIDR_ENV, cidr)
    with pytest.raises(UsageError, match="too wide"):
        _render("salmon-quant", tmp_path / "out")


def test_builder_cidrs_are_normalised_as_packer_reads_them(tmp_path):
    """A bare address given in the build target is written as a /32 (Packer's validation
    splits each entry at its slash)."""
    spec = find_spec("salmon-quant", SPECS)
    target = BuildTarget.aws(builder_cidrs=("203.0.113.9", "2001:db8::1"))
    v = render_mod.variables_for(spec, size_task(spec), BASE_AMI, target)
    assert v["builder_cidrs"] == ["203.0.113.9/32", "2001:db8::1/128"]


@needs_packer
@pytest.mark.parametrize("cidr, ok", [("::/0", False), ("2001:db8::/20", False), ("2001:db8::/48", True)])
def test_packer_refuses_a_wide_ipv6_builder_range(tmp_path, cidr, ok):
    _, result = _render("salmon-quant", tmp_path / "out")
    pkrvars = result.variables_file
    pkrvars.write_text(pkrvars.read_text().replace(CALLER, cidr))
    v = packer(result.out_dir, "validate", ".")
    assert (v.returncode == 0) == ok, v.stdout + v.stderr
    if not ok:
        assert "builder_cidrs" in v.stdout + v.stderr


def test_rendered_values_parse_with_python_hcl2(tmp_path):
    spec, result = _render("salmon-quant", tmp_path / "out", packer_version=(1, 6, 6))
    plan = size_task(spec)
    vars_ = load_hcl(result.variables_file)
    assert vars_["task"] == "salmon-quant"
    assert vars_["base_ami"] == BASE_AMI
    assert vars_["instance_type"] == "t3.medium"  # 4 GiB: Docker, the ECS agent and a conda solve
    assert vars_["ssh_username"] == "ec2-user"
    assert vars_["ansible_become"] is True
    assert vars_["builder_cidrs"] == [CALLER]
    assert vars_["awscli_prefix"] == spec.awscli.prefix
    assert vars_["docker_storage_driver"] == "overlay2"
    assert vars_["family"] == spec.image.family == "al2023"  # the play's factory_family: its packages
    assert vars_["task_images"] == list(spec.nextflow.containers)
    assert vars_["tags"] == {
        "factory:task": "salmon-quant",
        "factory:spec-hash": spec.spec_hash,
        "factory:base-ami": BASE_AMI,
        "factory:version": render_mod.__version__,
    }
    # launch-template mode (the spec's default): a small root, sized at launch
    assert spec.image.volume == "launch-template"
    assert vars_["block_devices"] == [{"device_name": "/dev/xvda", "volume_gib": 30}]
    assert plan.volume_gib > 30
    url, sha = render_mod.miniconda_installer("x86_64")
    assert vars_["miniconda_installer_url"] == url and vars_["miniconda_installer_sha256"] == sha
    # one sorted file: the one-line values first, then the nested ones, each group sorted
    keys = [k for k in vars_ if not k.startswith("__")]
    flat = [k for k in keys if not isinstance(vars_[k], (dict, list)) or k in ("builder_cidrs", "task_images")]
    nested = [k for k in keys if k not in flat]
    assert keys == sorted(flat) + sorted(nested) and nested == ["block_devices", "tags"]

    tpl = load_hcl(result.out_dir / "factory.pkr.hcl")
    src = tpl["source"][0]["amazon-ebs"]["factory"]
    assert src["shutdown_behavior"] == "terminate"
    assert src["encrypt_boot"] is True
    assert src["temporary_security_group_source_cidrs"] == "${var.builder_cidrs}"
    assert "metadata_options" not in src and "packer" not in tpl  # 1.6.6 cannot parse them
    prov = tpl["build"][0]["provisioner"][0]["ansible"]
    assert prov["use_proxy"] is False
    assert prov["playbook_file"] == "${path.root}/ansible/bake.yml"
    assert "manifest" in tpl["build"][0]["post-processor"][0]


def test_modern_packer_gets_plugins_and_imdsv2(tmp_path):
    _, result = _render("salmon-quant", tmp_path / "out", packer_version=(1, 11, 2))
    assert result.modern_packer
    tpl = load_hcl(result.out_dir / "factory.pkr.hcl")
    plugins = tpl["packer"][0]["required_plugins"][0]
    assert {k for k in plugins if not k.startswith("__")} == {"amazon", "ansible"}
    src = tpl["source"][0]["amazon-ebs"]["factory"]
    assert src["metadata_options"][0]["http_tokens"] == "required"
    # imds_support arrived in the amazon plugin 1.2.2; Packer 1.8.6-1.9 bundle 1.2.1
    assert src["imds_support"] == "v2.0"
    assert plugins["amazon"]["version"] == ">= 1.2.2"


def test_ami_mode_puts_the_sized_volume_in_the_ami(tmp_path):
    spec = find_spec("salmon-quant", SPECS)
    spec = dataclasses.replace(spec, image=dataclasses.replace(spec.image, volume="ami"))
    plan = size_task(spec)
    result = render(spec, plan, BASE_AMI, tmp_path / "out", packer_version=(1, 6, 6))
    assert result.variables["block_devices"] == [{"device_name": "/dev/xvda", "volume_gib": plan.volume_gib}]
    assert result.variables["volume_gib"] == plan.volume_gib


def test_al1_sizes_the_docker_device_and_basesize(tmp_path):
    spec = find_spec("salmon-quant", SPECS)
    spec = dataclasses.replace(spec, image=dataclasses.replace(spec.image, base="ecs-al1", family="al1", volume="ami"))
    result = render(spec, (200, 150), BASE_AMI, tmp_path / "out", packer_version=(1, 6, 6))
    assert result.variables["block_devices"] == [
        {"device_name": "/dev/xvda", "volume_gib": 8},
        {"device_name": "/dev/xvdcz", "volume_gib": 200},
    ]
    assert result.variables["docker_storage_driver"] == "devicemapper"
    assert result.variables["family"] == "al1"
    assert result.variables["docker_basesize_gib"] == 150


def test_rendering_twice_is_byte_identical(tmp_path):
    _, a = _render("salmon-quant", tmp_path / "a", packer_version=(1, 6, 6))
    _, b = _render("salmon-quant", tmp_path / "b", packer_version=(1, 6, 6))
    snap = {rel: (a.out_dir / rel).read_bytes() for rel in a.files}
    assert a.files == b.files
    assert all((b.out_dir / rel).read_bytes() == data for rel, data in snap.items())
    # re-rendering in place replaces the folder with identical bytes, and nothing else
    _, again = _render("salmon-quant", tmp_path / "a", packer_version=(1, 6, 6))
    assert {rel: (again.out_dir / rel).read_bytes() for rel in again.files} == snap
    on_disk = sorted(str(p.relative_to(a.out_dir)) for p in a.out_dir.rglob("*") if p.is_file())
    assert on_disk == sorted([*a.files, RENDER_STAMP])  # the files and the record of what was rendered
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dir left


def test_a_folder_that_holds_this_render_is_kept_and_any_change_to_it_is_rewritten(tmp_path):
    """An unchanged re-render leaves the folder alone (bake --all re-renders every spec);
    a file changed, added or removed in it since, or other inputs, write it again."""
    _, first = _render("salmon-quant", tmp_path / "a", packer_version=(1, 6, 6))
    playbook = first.out_dir / next(f for f in first.files if f.startswith("ansible/"))
    written_at = playbook.stat().st_mtime_ns
    _, again = _render("salmon-quant", tmp_path / "a", packer_version=(1, 6, 6))
    assert again.files == first.files and playbook.stat().st_mtime_ns == written_at  # kept, not rewritten
    original = playbook.read_bytes()
    playbook.write_bytes(original + b"# edited by hand\n")
    (first.out_dir / "stray.pkr.hcl").write_text("# would be loaded by packer\n")
    _render("salmon-quant", tmp_path / "a", packer_version=(1, 6, 6))
    assert playbook.read_bytes() == original and not (first.out_dir / "stray.pkr.hcl").exists()
    (first.out_dir / first.files[0]).unlink()
    _render("salmon-quant", tmp_path / "a", packer_version=(1, 6, 6))
    assert (first.out_dir / first.files[0]).is_file()
    assert "# factory:modern-packer begin" not in (first.out_dir / "factory.pkr.hcl").read_text()
    _, modern = _render("salmon-quant", tmp_path / "a", packer_version=(1, 7, 0))  # other inputs: another render
    assert modern.modern_packer and "# factory:modern-packer begin" in (first.out_dir / "factory.pkr.hcl").read_text()


def test_local_target_variables(tmp_path):
    target = BuildTarget.local(
        endpoint="http://127.0.0.1:5000", ssh_host="127.0.0.1", ssh_port=2222, ssh_username="root",
        keypair_name="factory-local", private_key_file="/tmp/key", installer_url="http://127.0.0.1:8000/i.sh",
        installer_sha256="a" * 64, python_interpreter="/usr/bin/python3",
    )
    _, result = _render("salmon-quant", tmp_path / "out", target=target, packer_version=(1, 6, 6))
    v = result.variables
    assert v["custom_endpoint_ec2"] == "http://127.0.0.1:5000"
    assert v["skip_credential_validation"] is True
    assert (v["ssh_host"], v["ssh_port"], v["ssh_username"]) == ("127.0.0.1", 2222, "root")
    assert v["ansible_become"] is False
    assert v["builder_cidrs"] == ["127.0.0.1/32"]
    assert v["miniconda_installer_sha256"] == "a" * 64


def test_render_refuses_to_replace_a_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(UsageError, match="not a folder factory rendered"):
        _render("salmon-quant", tmp_path / "mine", packer_version=(1, 6, 6))
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_cli_render_writes_the_folder(cli, tmp_path):
    out = tmp_path / "cli"
    r = cli("render", "salmon-quant", "--out", out, "--base-ami", BASE_AMI, "--specs-dir", SPECS)
    assert r.exit_code == 0, r.stdout + r.stderr
    assert "factory.auto.pkrvars.hcl" in r.stdout
    assert (out / "factory.auto.pkrvars.hcl").is_file()
    bad = cli("render", "no-such-task", "--out", tmp_path / "x", "--base-ami", BASE_AMI, "--specs-dir", SPECS)
    assert bad.exit_code != 0
    assert "no-such-task" in bad.stderr


def test_base_ami_from_ssm_through_moto(moto, monkeypatch):
    """The SSM lookup is a real boto3 call over HTTP to moto's server."""
    import boto3

    from factory.aws import Clients

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    spec = find_spec("salmon-quant", SPECS)
    ami = render_mod.resolve_base_ami(spec, Clients(region="us-east-1", endpoint_url=moto.endpoint))
    ssm = boto3.client("ssm", region_name="us-east-1", endpoint_url=moto.endpoint)
    parameter = spec.image.family_info.ssm_parameter(spec.image.architecture)
    assert ami == ssm.get_parameter(Name=parameter)["Parameter"]["Value"] and ami.startswith("ami-")
    pinned = dataclasses.replace(spec, image=dataclasses.replace(spec.image, base="ami-0feedface0000000"))
    assert render_mod.resolve_base_ami(pinned, None) == "ami-0feedface0000000"


def test_miniconda_pins_come_from_the_role_defaults_for_each_architecture():
    """One place for the pins: the role's defaults, keyed by `uname -m`."""
    import re

    x86_url, x86_sha = render_mod.miniconda_installer("x86_64")
    arm_url, arm_sha = render_mod.miniconda_installer("arm64")
    assert x86_url.startswith("https://repo.anaconda.com/miniconda/") and x86_url.endswith("-Linux-x86_64.sh")
    assert arm_url.endswith("-Linux-aarch64.sh")
    assert all(re.fullmatch(r"[0-9a-f]{64}", s) for s in (x86_sha, arm_sha)) and x86_sha != arm_sha


def test_a_rerender_keeps_only_the_build_records_it_is_told_to(tmp_path):
    spec = find_spec("salmon-quant", SPECS)
    target = render_mod.BuildTarget.aws(builder_cidrs=["203.0.113.7/32"])
    out = tmp_path / "build" / spec.name
    render_mod.render(spec, (124, 0), "ami-0123456789abcdef0", out, target, packer_version=(1, 6, 6))
    (out / render_mod.PACKER_LOG).write_text("the last real build\n")
    (out / "stray.txt").write_text("not a build record\n")
    render_mod.render(spec, (124, 0), "ami-0123456789abcdef0", out, target, packer_version=(1, 6, 6), keep=render_mod.BUILD_RECORDS)
    assert (out / render_mod.PACKER_LOG).read_text() == "the last real build\n"
    assert not (out / "stray.txt").exists()
    render_mod.render(spec, (124, 0), "ami-0123456789abcdef0", out, target, packer_version=(1, 6, 6))
    assert not (out / render_mod.PACKER_LOG).exists()
    assert not list(out.parent.glob(".*"))  # no temporary folder left beside it


# -- the builder: factory.yaml's `builder:` section ---------------------------------------


def _aws_target(tmp_path, text: str):
    from factory.cloud import Cloud

    config = tmp_path / "factory.yaml"
    config.write_text(text)
    return Cloud("aws", config_path=config).target("us-east-1")


def test_builder_defaults_to_four_gib_in_the_default_vpc(tmp_path):
    spec = find_spec("salmon-quant", SPECS)
    v = render_mod.variables_for(spec, size_task(spec), BASE_AMI, _aws_target(tmp_path, "{}\n"))
    assert v["instance_type"] == "t3.medium"
    assert (v["subnet_id"], v["ssh_interface"], v["associate_public_ip"], v["iam_instance_profile"], v["kms_key_id"]) == (
        "", "public_ip", "", "", "")
    arm = dataclasses.replace(spec, image=dataclasses.replace(spec.image, architecture="arm64"))
    assert render_mod.variables_for(arm, size_task(arm), BASE_AMI, _aws_target(tmp_path, "{}\n"))["instance_type"] == "t4g.medium"


def test_builder_runs_in_the_batch_subnet_by_default(tmp_path):
    target = _aws_target(tmp_path, "batch:\n  subnets: [subnet-0aaa, subnet-0bbb]\n  security_groups: [sg-0ccc]\n")
    spec = find_spec("salmon-quant", SPECS)
    v = render_mod.variables_for(spec, size_task(spec), BASE_AMI, target)
    assert v["subnet_id"] == "subnet-0aaa" and v["associate_public_ip"] == "true"


@needs_packer
def test_a_private_builder_through_session_manager_renders_and_validates(tmp_path):
    """No public address, no inbound SSH (the temporary security group admits only
    loopback), Session Manager through an instance profile, the AMI under a KMS key, a
    larger builder: every value reaches the rendered files and Packer accepts them."""
    target = _aws_target(tmp_path, (
        "builder:\n"
        "  instance_types: {x86_64: m6i.large}\n"
        "  subnet: subnet-0private\n"
        "  ssh_interface: session_manager\n"
        "  instance_profile: factory-builder\n"
        "  kms_key: alias/factory-amis\n"
    ))
    _, result = _render("salmon-quant", tmp_path / "out", target=target)
    v = load_hcl(result.variables_file)
    assert v["instance_type"] == "m6i.large" and v["subnet_id"] == "subnet-0private"
    assert v["ssh_interface"] == "session_manager" and v["iam_instance_profile"] == "factory-builder"
    # the subnet's own setting (a private subnet gives no public address; one that does is the user's choice)
    assert v["associate_public_ip"] == "" and v["kms_key_id"] == "alias/factory-amis"
    assert v["builder_cidrs"] == ["127.0.0.1/32"]
    src = load_hcl(result.out_dir / "factory.pkr.hcl")["source"][0]["amazon-ebs"]["factory"]
    assert "associate_public_ip_address" in src and src["kms_key_id"] == "${var.kms_key_id}"
    check = packer(result.out_dir, "validate", ".")
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.parametrize("text, message", [
    ("builder:\n  ssh_interface: session_manager\n", "builder.instance_profile: ssh_interface session_manager needs an instance profile"),
    ("builder:\n  public_ip: false\n", "builder.public_ip: false, but ssh_interface is public_ip"),
    ("builder:\n  ssh_interface: ssm\n", "builder.ssh_interface: expected one of public_ip, private_ip, session_manager"),
    ("builder:\n  ssh_interface: session_manager\n  instance_profile: factory-builder\n",
     "builder.subnet: ssh_interface session_manager needs a subnet (builder.subnet or batch.subnets)"),
    ("builder:\n  ssh_interface: private_ip\n", "builder.subnet: ssh_interface private_ip needs a subnet"),
    ("builder:\n  subnet: private-a\n", "builder.subnet: 'private-a' is not a subnet-... id"),
    ("builder:\n  instance_types: {x86: t3.large}\n", "builder.instance_types.x86: unknown architecture"),
    ("builder:\n  instance_types: t3.large\n", "builder.instance_types: expected a mapping of architecture"),
    ("builder:\n  size: big\n", "builder.size: unknown setting"),
])
def test_a_wrong_builder_setting_names_the_file_and_field(tmp_path, text, message):
    from factory.config import ConfigError

    with pytest.raises(ConfigError) as exc:
        _aws_target(tmp_path, text)
    assert f"{tmp_path / 'factory.yaml'}: {message}" in exc.value.message


def test_the_task_images_reach_the_bake_check(tmp_path):
    """nextflow.containers goes to the bake check (the rendered task_images, passed to the
    role as bake_check_task_images), and a spec without it keeps its hash."""
    import yaml

    from factory.spec import load_spec

    doc = yaml.safe_load((SPECS / "salmon-quant.yaml").read_text())
    before = find_spec("salmon-quant", SPECS).spec_hash
    doc["storage"]["benchmarks"] = str(SPECS / "benchmarks" / "salmon-quant.csv")
    (tmp_path / "salmon-quant.yaml").write_text(yaml.safe_dump(doc))
    assert load_spec(tmp_path / "salmon-quant.yaml").spec_hash == before
    doc["nextflow"]["containers"] = ["quay.io/biocontainers/salmon:1.10.3--h6dccd9a_2"]
    (tmp_path / "salmon-quant.yaml").write_text(yaml.safe_dump(doc))
    spec = load_spec(tmp_path / "salmon-quant.yaml")
    assert spec.nextflow.containers == ("quay.io/biocontainers/salmon:1.10.3--h6dccd9a_2",) and spec.spec_hash != before
    result = render(spec, size_task(spec), BASE_AMI, tmp_path / "out", packer_version=(1, 6, 6))
    assert load_hcl(result.variables_file)["task_images"] == ["quay.io/biocontainers/salmon:1.10.3--h6dccd9a_2"]
    tpl = load_hcl(result.out_dir / "factory.pkr.hcl")
    assert tpl["locals"][0]["ansible_vars"]["bake_check_task_images"] == "${var.task_images}"


def test_a_private_ip_builder_needs_the_range_factory_connects_from(tmp_path, monkeypatch):
    """Over private_ip the caller's public address (checkip) is not where SSH comes from."""
    target = _aws_target(tmp_path, "builder:\n  subnet: subnet-0private\n  ssh_interface: private_ip\n")
    spec = find_spec("salmon-quant", SPECS)
    monkeypatch.delenv(render_mod.CALLER_CIDR_ENV)
    with pytest.raises(UsageError, match=r"private_ip: set FACTORY_BUILDER_CIDR to the private range"):
        render_mod.variables_for(spec, size_task(spec), BASE_AMI, target)
    monkeypatch.setenv(render_mod.CALLER_CIDR_ENV, "10.20.0.0/16")
    v = render_mod.variables_for(spec, size_task(spec), BASE_AMI, target)
    assert v["builder_cidrs"] == ["10.20.0.0/16"] and v["associate_public_ip"] == ""


def test_a_private_builder_keeps_its_subnets_public_address_setting_unless_told(tmp_path, monkeypatch):
    """Issue 22 §6: over private_ip or session_manager the subnet decides about a public
    address (null), unless factory.yaml says; ssh_interface public_ip asks for one."""
    spec = find_spec("salmon-quant", SPECS)
    monkeypatch.setenv(render_mod.CALLER_CIDR_ENV, "10.20.0.0/16")
    base = "batch:\n  subnets: [subnet-0nat]\n  security_groups: [sg-0ccc]\nbuilder:\n  instance_profile: factory-builder\n"
    for interface, public_ip, want in [
        ("session_manager", None, ""), ("private_ip", None, ""), ("session_manager", True, "true"),
        ("private_ip", False, "false"), ("public_ip", None, "true"),
    ]:
        text = base + f"  ssh_interface: {interface}\n" + ("" if public_ip is None else f"  public_ip: {str(public_ip).lower()}\n")
        v = render_mod.variables_for(spec, size_task(spec), BASE_AMI, _aws_target(tmp_path, text))
        assert (v["subnet_id"], v["associate_public_ip"]) == ("subnet-0nat", want), (interface, public_ip)


def test_a_builder_subnet_refusal_says_what_the_subnet_needs(tmp_path):
    from factory.config import ConfigError

    with pytest.raises(ConfigError) as exc:
        _aws_target(tmp_path, "builder:\n  ssh_interface: session_manager\n  instance_profile: factory-builder\n")
    text = exc.value.message
    assert "NAT gateway" in text and "ssm, ssmmessages and ec2messages" in text and "egress" in text


def test_session_manager_is_refused_for_the_legacy_ami_without_an_ssm_agent(tmp_path):
    """Issue 22 §7: the AL1 AMI has no SSM agent, so Session Manager could never connect."""
    from factory.errors import FactoryError

    target = _aws_target(tmp_path, "builder:\n  subnet: subnet-0nat\n  ssh_interface: session_manager\n"
                                   "  instance_profile: factory-builder\n")
    spec = find_spec("salmon-quant", SPECS)
    al1 = dataclasses.replace(spec, image=dataclasses.replace(spec.image, base="ecs-al1", family="al1", volume="ami"))
    with pytest.raises(FactoryError, match=r"image.base: ECS-optimized Amazon Linux \(legacy.*ships no SSM agent.*session_manager"):
        render_mod.variables_for(al1, size_task(al1), BASE_AMI, target)
    assert render_mod.variables_for(spec, size_task(spec), BASE_AMI, target)["ssh_interface"] == "session_manager"


def test_bake_wants_the_session_manager_plugin_before_any_instance_starts(tmp_path, monkeypatch):
    """Issue 22 §7: without session-manager-plugin on PATH, prepare stops before it asks
    AWS anything (no base AMI lookup, no render); with one, the check passes."""
    from factory.bake.build import prepare
    from factory.bake.checks import check_session_manager_plugin
    from factory.cloud import Cloud
    from factory.errors import FactoryError

    config = tmp_path / "factory.yaml"
    config.write_text("builder:\n  subnet: subnet-0nat\n  ssh_interface: session_manager\n  instance_profile: factory-builder\n")
    cloud = Cloud("aws", config_path=config)
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    spec = find_spec("salmon-quant", SPECS)
    with pytest.raises(FactoryError, match=r"builder.ssh_interface: session_manager needs AWS's session-manager-plugin"):
        prepare(spec, cloud, tmp_path / "build")
    assert not (tmp_path / "build").exists()  # stopped before the render
    plugin = empty / "session-manager-plugin"
    plugin.write_text("#!/bin/sh\n")
    plugin.chmod(0o755)
    check_session_manager_plugin(cloud.target("us-east-1"), str(config))


def test_cli_render_builds_with_the_builder_section(cli, tmp_path, monkeypatch):
    """Issue 22 §11: `factory render` writes what `factory bake` would build: factory.yaml's
    builder (from --config, or ./factory.yaml), not the default builder."""
    monkeypatch.setenv(render_mod.CALLER_CIDR_ENV, "10.20.0.0/16")
    config = tmp_path / "settings.yaml"
    config.write_text("builder:\n  instance_types: {x86_64: m6i.large}\n  subnet: subnet-0nat\n"
                      "  ssh_interface: private_ip\n  instance_profile: factory-builder\n  kms_key: alias/amis\n")
    r = cli("render", "salmon-quant", "--out", tmp_path / "a", "--base-ami", BASE_AMI, "--specs-dir", SPECS, "--config", config)
    assert r.exit_code == 0, r.stdout + r.stderr
    v = load_hcl(tmp_path / "a" / render_mod.VARIABLES_FILE)
    assert (v["instance_type"], v["subnet_id"], v["ssh_interface"], v["iam_instance_profile"], v["kms_key_id"]) == (
        "m6i.large", "subnet-0nat", "private_ip", "factory-builder", "alias/amis")
    # the same as the target a bake uses
    from factory.cloud import Cloud

    spec = find_spec("salmon-quant", SPECS)
    want = render_mod.variables_for(spec, size_task(spec), BASE_AMI, Cloud("aws", config_path=config).target(spec.region))
    builder_keys = ("instance_type", "subnet_id", "ssh_interface", "associate_public_ip", "iam_instance_profile",
                    "kms_key_id", "builder_cidrs")
    assert {k: v[k] for k in builder_keys} == {k: want[k] for k in builder_keys}
    # ./factory.yaml when no --config, as bake reads it
    monkeypatch.chdir(tmp_path)
    (tmp_path / "factory.yaml").write_text(config.read_text())
    r = cli("render", "salmon-quant", "--out", tmp_path / "b", "--base-ami", BASE_AMI, "--specs-dir", SPECS)
    assert r.exit_code == 0, r.stdout + r.stderr
    assert load_hcl(tmp_path / "b" / render_mod.VARIABLES_FILE)["subnet_id"] == "subnet-0nat"
    (tmp_path / "factory.yaml").write_text("builder:\n  ssh_interface: session_manager\n")
    bad = cli("render", "salmon-quant", "--out", tmp_path / "c", "--base-ami", BASE_AMI, "--specs-dir", SPECS)
    assert bad.exit_code == 1 and "builder.subnet: ssh_interface session_manager needs a subnet" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "c").exists()


def test_the_legacy_ami_is_refused_in_launch_template_volume_mode(tmp_path):
    """Issue 22 §8: AL1's thin pool is made at the builder's first boot at the base's
    22 GiB and kept in the AMI, so a larger /dev/xvdcz from the launch template would never
    be used: the render refuses (and writes no folder); image.volume: ami renders the pool's
    device at the task's size."""
    from factory.errors import FactoryError

    spec = find_spec("star-align", SPECS)
    al1 = dataclasses.replace(spec, image=dataclasses.replace(spec.image, base="ecs-al1", family="al1"))
    assert al1.image.volume == "launch-template"  # the default
    with pytest.raises(FactoryError, match=r"image.volume: launch-template cannot size .*22 GiB thin pool on /dev/xvdcz.*image.volume: ami"):
        render(al1, size_task(al1), BASE_AMI, tmp_path / "lt", packer_version=(1, 6, 6))
    assert not (tmp_path / "lt").exists()
    baked = dataclasses.replace(al1, image=dataclasses.replace(al1.image, volume="ami"))
    result = render(baked, size_task(baked), BASE_AMI, tmp_path / "ami", packer_version=(1, 6, 6))
    devices = {d["device_name"]: d["volume_gib"] for d in load_hcl(result.variables_file)["block_devices"]}
    assert devices["/dev/xvdcz"] == size_task(baked).volume_gib > 22
