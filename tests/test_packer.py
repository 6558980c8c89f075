"""The Packer wrapper against real Packer and moto's server over HTTP.

A tiny hand-written amazon-ebs template with `communicator = "none"` (and a shell-local
provisioner where a build must last a while) exercises version detection, validate,
the machine-readable build, the manifest, secret masking, and interruption cleanup.
With no communicator Packer makes no key pair, so the key pair's cleanup is proven where
Packer does make one: tests/test_bake.py's interrupted bake, through the call log.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from factory import packer
from factory.errors import PackerError

# Only the tests that run Packer need it; the missing-Packer errors and the parsers run anywhere.
needs_packer = pytest.mark.skipif(shutil.which("packer") is None, reason="needs Packer (make system-deps)")

REGION = "us-east-1"
SECRET = "SuperSecretValueThatMustNotBeLogged42"


@pytest.fixture
def ec2(moto):
    import boto3

    moto.reset()
    return boto3.client(
        "ec2", endpoint_url=moto.endpoint, region_name=REGION, aws_access_key_id="testing", aws_secret_access_key="testing"
    )


@pytest.fixture
def env(moto):
    e = dict(os.environ)
    e.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_REGION": REGION})
    return e


def template(folder: Path, endpoint: str, provisioner: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "build.pkr.hcl").write_text(textwrap.dedent(f"""
        variable "endpoint" {{
          type = string
        }}

        source "amazon-ebs" "tiny" {{
          region                                = "{REGION}"
          custom_endpoint_ec2                   = var.endpoint
          skip_region_validation                = true
          skip_credential_validation            = true
          skip_metadata_api_check               = true
          communicator                          = "none"
          instance_type                         = "t3.micro"
          ami_name                              = "tiny-${{uuidv4()}}"
          temporary_security_group_source_cidrs = ["127.0.0.1/32"]
          tags                                  = {{ "factory:task" = "tiny" }}
          source_ami_filter {{
            filters     = {{ name = "amzn2-ami-ecs-hvm-*-x86_64-ebs" }}
            owners      = ["amazon"]
            most_recent = true
          }}
        }}

        build {{
          sources = ["source.amazon-ebs.tiny"]
          {provisioner}
          post-processor "manifest" {{
            output = "manifest.json"
          }}
        }}
    """))
    (folder / "tiny.auto.pkrvars.hcl").write_text(f'endpoint = "{endpoint}"\n')
    return folder


def leftovers(ec2) -> dict:
    instances = [
        (i["InstanceId"], i["State"]["Name"])
        for r in ec2.describe_instances()["Reservations"]
        for i in r["Instances"]
    ]
    return {
        "running": [i for i, state in instances if state not in ("terminated", "shutting-down")],
        "instances": instances,
        "security_groups": [g["GroupName"] for g in ec2.describe_security_groups()["SecurityGroups"] if g["GroupName"] != "default"],
    }


# -- finding Packer ------------------------------------------------------------------


@needs_packer
def test_version_of_the_installed_packer():
    info = packer.find_packer()
    assert info.version >= (1, 6, 0)
    assert Path(info.path).is_absolute()
    assert info.uses_plugins == (info.version >= (1, 7, 0))


def test_missing_packer_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("FACTORY_PACKER", str(tmp_path / "no-such-packer"))
    with pytest.raises(PackerError) as exc:
        packer.find_packer()
    assert "apt-get install packer" in exc.value.message
    assert "developer.hashicorp.com/packer" in exc.value.message


def test_no_packer_on_path_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("FACTORY_PACKER", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(PackerError, match="Packer not found on PATH: install it with `apt-get install packer`"):
        packer.find_packer()


def test_a_packer_that_is_not_hashicorps_is_refused(tmp_path, monkeypatch):
    fake = tmp_path / "packer"
    fake.write_text("#!/bin/sh\necho 'usage: packer [options] wordlist'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("FACTORY_PACKER", str(fake))
    with pytest.raises(PackerError, match="is not HashiCorp Packer"):
        packer.find_packer()


@pytest.mark.parametrize(
    "text, version",
    [
        ("Packer v1.6.6\n", (1, 6, 6)),
        ("Packer v1.11.2\n\nYour version of Packer is out of date!", (1, 11, 2)),
        ("1.10.0\n", (1, 10, 0)),
        ("cracklib packer", None),
    ],
)
def test_parse_version(text, version):
    assert packer.parse_version(text) == version


def test_init_only_where_the_version_needs_it(tmp_path):
    (tmp_path / "a.pkr.hcl").write_text('packer {\n  required_plugins {\n  }\n}\n')
    old = packer.PackerInfo("/usr/bin/packer", (1, 6, 6))
    new = packer.PackerInfo("/usr/bin/packer", (1, 10, 3))
    assert not packer.needs_init(old, tmp_path)
    assert packer.needs_init(new, tmp_path)
    (tmp_path / "a.pkr.hcl").write_text('source "null" "x" {}\n')
    assert not packer.needs_init(new, tmp_path)
    # Debian's 1.6.6 really skips it (no `packer init` there at all).
    assert packer.init(old, tmp_path) is False


def test_machine_readable_lines_are_parsed():
    target, kind, data = packer.parse_line("1795556647,,ui,say,==> amazon-ebs.t: No volumes%!(PACKER_COMMA) skipping\n")
    assert (target, kind) == ("", "ui")
    assert data == ["say", "==> amazon-ebs.t: No volumes, skipping"]
    assert packer.step_text(data[1]) == "No volumes, skipping"
    assert packer.parse_line("not machine readable") is None


# -- validate and build against moto -------------------------------------------------


@needs_packer
def test_validate_refusal_is_one_message(tmp_path, moto, env):
    folder = template(tmp_path / "t", moto.endpoint)
    (folder / "tiny.auto.pkrvars.hcl").unlink()
    info = packer.find_packer()
    with pytest.raises(PackerError) as exc:
        packer.validate(info, folder, env)
    assert "packer validate failed" in exc.value.message
    assert 'Unset variable "endpoint"' in exc.value.message


@needs_packer
def test_build_reads_the_ami_from_the_manifest_and_masks_secrets(tmp_path, moto, ec2, env):
    # The provisioner echoes the secret key: the log must not keep it.
    folder = template(
        tmp_path / "t", moto.endpoint,
        provisioner='provisioner "shell-local" {\n    inline = ["echo key=$AWS_SECRET_ACCESS_KEY"]\n  }',
    )
    info = packer.find_packer()
    packer.validate(info, folder, env)
    steps: list[str] = []
    out = packer.build(info, folder, env=env, log_path=tmp_path / "logs" / "packer.log", on_step=steps.append)
    assert out.ami_id.startswith("ami-") and out.region == REGION
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["builds"][-1]["artifact_id"] == f"{REGION}:{out.ami_id}"
    image = ec2.describe_images(ImageIds=[out.ami_id])["Images"][0]
    assert {"Key": "factory:task", "Value": "tiny"} in image["Tags"]
    assert any("Launching a source AWS instance" in s for s in steps)
    log = (tmp_path / "logs" / "packer.log").read_text()
    assert "key=****" in log
    assert SECRET not in log
    assert leftovers(ec2)["running"] == []


@needs_packer
def test_a_second_build_reads_its_own_manifest_entry(tmp_path, moto, ec2, env):
    folder = template(tmp_path / "t", moto.endpoint)
    info = packer.find_packer()
    first = packer.build(info, folder, env=env)
    second = packer.build(info, folder, env=env)
    assert first.ami_id != second.ami_id
    assert packer.read_manifest(folder / "manifest.json")[0] == second.ami_id


def test_manifest_picks_the_last_run(tmp_path):
    m = tmp_path / "manifest.json"
    m.write_text(json.dumps({
        "builds": [
            {"artifact_id": "us-east-1:ami-new", "packer_run_uuid": "b"},
            {"artifact_id": "us-east-1:ami-old", "packer_run_uuid": "a"},
        ],
        "last_run_uuid": "b",
    }))
    assert packer.read_manifest(m)[:2] == ("ami-new", "us-east-1")
    m.write_text("{}")
    with pytest.raises(PackerError, match="lists no build"):
        packer.read_manifest(m)
    with pytest.raises(PackerError, match="wrote no manifest"):
        packer.read_manifest(tmp_path / "missing.json")


@needs_packer
def test_build_failure_is_one_clear_message(tmp_path, moto, env):
    folder = template(tmp_path / "t", "http://127.0.0.1:9")  # nothing listens there
    info = packer.find_packer()
    with pytest.raises(PackerError) as exc:
        packer.build(info, folder, env=env)
    msg = exc.value.message
    assert msg.startswith("packer build failed in")
    assert "connection refused" in msg
    assert msg.count("Error querying AMI") == 1
    assert str(folder / "packer.log") in msg


SLOW = 'provisioner "shell-local" {\n    inline = ["sleep 61"]\n  }'


def _wait_for_provisioning(folder: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = folder / "packer.log"
        if log.exists() and "Running local shell script" in log.read_text():
            return
        time.sleep(0.1)
    raise AssertionError("Packer never reached its provisioner")


@needs_packer
def test_cancel_forwards_sigint_and_packer_cleans_up(tmp_path, moto, ec2, env):
    folder = template(tmp_path / "t", moto.endpoint, provisioner=SLOW)
    info = packer.find_packer()
    cancel = threading.Event()
    threading.Thread(target=lambda: (_wait_for_provisioning(folder), cancel.set()), daemon=True).start()
    start = time.monotonic()
    with pytest.raises(packer.BuildInterrupted) as exc:
        packer.build(info, folder, env=env, cancel=cancel)
    assert time.monotonic() - start < 40  # did not wait for the 60 s provisioner
    assert exc.value.exit_code == 130
    assert "Packer cleaned up its instance, key pair and security group" in exc.value.message
    left = leftovers(ec2)
    assert left["instances"], "the build should have launched an instance"
    assert left["running"] == [] and left["security_groups"] == []
    assert "Cleanly cancelled builds" in (folder / "packer.log").read_text()
    assert not _sleep_61_running(), "Packer's provisioner outlived the cancelled build"


@needs_packer
def test_timeout_interrupts_and_cleans_up(tmp_path, moto, ec2, env):
    folder = template(tmp_path / "t", moto.endpoint, provisioner=SLOW)
    info = packer.find_packer()
    with pytest.raises(PackerError, match="timed out after 3s"):
        packer.build(info, folder, env=env, timeout=3)
    left = leftovers(ec2)
    assert left["running"] == [] and left["security_groups"] == []


@needs_packer
def test_ctrl_c_in_the_calling_process_cleans_up(tmp_path, moto, ec2, env):
    """SIGINT to a Python process running build(): Packer gets it forwarded, cleans up."""
    folder = template(tmp_path / "t", moto.endpoint, provisioner=SLOW)
    script = textwrap.dedent(f"""
        import sys
        from factory import packer
        info = packer.find_packer()
        try:
            packer.build(info, {str(folder)!r})
        except packer.BuildInterrupted as exc:
            print("INTERRUPTED", exc.message)
            sys.exit(130)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True)
    _wait_for_provisioning(folder)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    assert "INTERRUPTED" in out
    left = leftovers(ec2)
    assert left["instances"] and left["running"] == []
    assert left["security_groups"] == []


def _sleep_61_running() -> bool:
    """Whether the SLOW provisioner's `sleep 61` still runs anywhere (it is Packer's grandchild)."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if cmdline.read_bytes() == b"sleep\x0061\x00":
                return True
        except OSError:
            continue
    return False



def test_packer_version_is_asked_once_per_binary(tmp_path):
    """render and build both need the version: one `packer version` per binary, again when it is replaced."""
    calls = tmp_path / "calls"
    fake = tmp_path / "packer"
    fake.write_text(f'#!/bin/sh\necho asked >> {calls}\necho "Packer v1.6.6"\n')
    fake.chmod(0o755)
    assert packer.find_packer(str(fake)).version == (1, 6, 6)
    assert packer.find_packer(str(fake)).version == (1, 6, 6)
    assert calls.read_text().count("asked") == 1
    fake.write_text(f'#!/bin/sh\necho asked >> {calls}\necho "Packer v1.10.3"\n')
    assert packer.find_packer(str(fake)).version == (1, 10, 3)
    assert calls.read_text().count("asked") == 2
