"""GPU tasks (`image.accelerator: nvidia`): the spec's refusals, the GPU base parameter, GPU
tiers, Batch's NVIDIA image type, Nextflow's accelerator, and one GPU bake on the local
cloud (its build host stood in for the ECS GPU-optimized AMI: factory/local/builder/gpu_base.py)
that the bake, register and Nextflow tests share; a role that breaks a version lock fails
the GPU check on a build host of its own."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from factory.families import FAMILIES
from factory.gpu import nvidia_gpu
from factory.spec import check_file, find_spec, load_specs
from tests.conftest import REPO, SPECS

GPU_TASK = "dorado-basecall"
FACTORY = str(Path(sys.executable).with_name("factory"))
ECS = "/aws/service/ecs/optimized-ami"


# -- the base parameter: one place (Family.ssm_parameter) --------------------------------


def test_the_gpu_base_is_the_familys_ecs_gpu_parameter():
    al2023, al2, al1 = FAMILIES["al2023"], FAMILIES["al2"], FAMILIES["al1"]
    assert al2023.ssm_parameter("x86_64", "nvidia") == f"{ECS}/amazon-linux-2023/gpu/recommended/image_id"
    assert al2.ssm_parameter("x86_64", "nvidia") == f"{ECS}/amazon-linux-2/gpu/recommended/image_id"
    assert al2023.ssm_parameter("x86_64") == f"{ECS}/amazon-linux-2023/recommended/image_id"  # the CPU default is unchanged
    assert al2023.ssm_parameter("arm64", "nvidia") is None and "no arm64 ECS GPU" in al2023.no_base_reason("arm64", "nvidia")
    assert al1.ssm_parameter("x86_64", "nvidia") is None and "no ECS GPU-optimized AMI" in al1.no_base_reason("x86_64", "nvidia")
    assert al2023.image_type("nvidia") == "ECS_AL2023_NVIDIA" and al2.image_type("nvidia") == "ECS_AL2_NVIDIA"
    assert al2023.image_type() == "ECS_AL2023"
    with pytest.raises(ValueError):
        al2023.ssm_parameter("x86_64", "neuron")
    spec = find_spec(GPU_TASK, SPECS)
    assert spec.image.accelerator == "nvidia" and spec.image.base_parameter == al2023.ssm_parameter("x86_64", "nvidia")


def test_gpu_families_are_a_table():
    assert nvidia_gpu("g5.xlarge") == "NVIDIA A10G" and nvidia_gpu("p6-b200.48xlarge") == "NVIDIA B200"
    assert nvidia_gpu("c6i.4xlarge") is None and nvidia_gpu("g4ad.xlarge") is None  # AMD, not NVIDIA


# -- validate: every refusal ------------------------------------------------------------


GPU_DOC = """name: {name}
description: a GPU task
image:
  base: {base}
  architecture: {arch}
  accelerator: {accel}
storage:
  max_input_gib: 10
  footprint: {{index_gib: 1, scratch_gib: 1, output_gib: 1}}
{batch}{nextflow}"""


def _check(tmp_path, *, base="ecs-al2023", arch="x86_64", accel="nvidia", types="[g5.xlarge]", nextflow=""):
    batch = f"batch:\n  instance_types: {types}\n" if types is not None else ""
    path = tmp_path / "t-gpu.yaml"
    path.write_text(GPU_DOC.format(name="t-gpu", base=base, arch=arch, accel=accel, batch=batch, nextflow=nextflow))
    return {p.field: p.message for p in check_file(path).problems}


def test_a_gpu_spec_on_gpu_types_is_valid(tmp_path):
    assert _check(tmp_path) == {}
    assert _check(tmp_path, base="ecs-al2", types="[g4dn.xlarge, p3.2xlarge]") == {}
    assert _check(tmp_path, nextflow="nextflow:\n  gpus: 4\n", types="[g5.12xlarge]") == {}


@pytest.mark.parametrize("kw, field, words", [
    (dict(arch="arm64", types="[g5g.xlarge]"), "image.architecture", "no arm64 ECS GPU-optimized AMI"),
    (dict(base="ecs-al1"), "image.base", "no ECS GPU-optimized AMI for the ECS-optimized Amazon Linux (legacy"),
    (dict(types="[c6i.4xlarge]"), "batch.instance_types[0]", "c6i.4xlarge has no GPU"),
    (dict(types="[optimal]"), "batch.instance_types[0]", "optimal picks CPU-only families"),
    (dict(types="[inf2.xlarge]"), "batch.instance_types[0]", "carries AWS Inferentia2, not an NVIDIA GPU"),
    (dict(types=None), "batch.instance_types", "is required with `image.accelerator: nvidia`"),
    (dict(types="[p3.2xlarge]"), "batch.instance_types[0]", "not supported by Batch's ECS_AL2023_NVIDIA"),
    (dict(accel="none", types="[g5.xlarge]"), "batch.instance_types[0]", "g5.xlarge is a GPU type (NVIDIA A10G) but image.accelerator is none"),
    (dict(accel="none", types="[c6i.xlarge]", nextflow="nextflow:\n  gpus: 1\n"), "nextflow.gpus", "applies only with `image.accelerator: nvidia`"),
    (dict(accel="amd"), "image.accelerator", "must be one of none, nvidia"),
    (dict(nextflow="nextflow:\n  gpus: 0\n"), "nextflow.gpus", "must be >= 1"),
])
def test_validate_refuses_naming_the_field_and_why(tmp_path, kw, field, words):
    problems = _check(tmp_path, **kw)
    assert field in problems, problems
    assert words in problems[field]


def test_the_cli_refuses_a_cpu_type_for_a_gpu_spec_without_a_traceback(tmp_path):
    _check(tmp_path, types="[m5.xlarge]")
    proc = subprocess.run([FACTORY, "validate", str(tmp_path / "t-gpu.yaml")], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 1 and "batch.instance_types[0]" in proc.stdout + proc.stderr and "Traceback" not in proc.stderr


def test_a_cpu_spec_keeps_its_hash_and_a_gpu_spec_records_its_accelerator():
    specs = {s.name: s for s in load_specs([SPECS])}
    assert "accelerator" not in specs["salmon-quant"].to_json()["image"] and "gpus" not in specs["salmon-quant"].to_json()["nextflow"]
    gpu = specs[GPU_TASK].to_json()
    assert gpu["image"]["accelerator"] == "nvidia" and gpu["nextflow"]["gpus"] == 1


# -- tiers, Batch's image type, Nextflow ------------------------------------------------


def test_gpu_and_cpu_tasks_never_share_a_tier():
    from factory.sizing import size_specs
    from factory.tiers import choose_tiers

    gpu = find_spec(GPU_TASK, SPECS)
    # The same task on the same types but without the accelerator: still its own tier.
    cpu = dataclasses.replace(gpu, name="cpu-twin", image=dataclasses.replace(gpu.image, accelerator="none"))
    tiers = choose_tiers(size_specs([gpu, cpu]), max_tiers=None)
    assert sorted(t.tasks for t in tiers) == [("cpu-twin",), (GPU_TASK,)]


def test_a_gpu_tier_names_the_nvidia_image_type_and_its_ami():
    from factory.register.compute_environment import ec2_configuration
    from factory.register.targets import targets_for
    from factory.sizing import size_specs
    from factory.tiers import choose_tiers

    specs = load_specs([SPECS])
    targets = {t.ami_task: t for t in targets_for(specs, choose_tiers(size_specs(specs)))}
    assert ec2_configuration(targets[GPU_TASK], "ami-0123456789abcdef0") == [{"imageType": "ECS_AL2023_NVIDIA", "imageIdOverride": "ami-0123456789abcdef0"}]
    assert ec2_configuration(targets["salmon-quant"], "ami-0123456789abcdef0") == [{"imageType": "ECS_AL2023"}]
    al2 = dataclasses.replace(targets[GPU_TASK], family=FAMILIES["al2"])
    assert ec2_configuration(al2, "ami-1")[0]["imageType"] == "ECS_AL2_NVIDIA"


def test_nextflow_gives_the_gpu_process_its_queue_and_accelerator():
    from factory.nextflow import render_config
    from factory.sizing import size_specs
    from factory.tiers import choose_tiers

    specs = load_specs([SPECS])
    tiers = choose_tiers(size_specs(specs))
    text = render_config(specs, tiers)
    line = next(x for x in text.splitlines() if "'DORADO_BASECALL'" in x)
    assert "queue = 'factory-dorado-basecall'; accelerator = 1 }" in line
    assert "accelerator.type is ignored on AWS Batch: the queue's instance types choose the GPU" in text
    salmon = next(x for x in text.splitlines() if "'SALMON_QUANT'" in x)
    assert "accelerator" not in salmon
    four = [dataclasses.replace(s, nextflow=dataclasses.replace(s.nextflow, gpus=4)) if s.name == GPU_TASK else s for s in specs]
    assert "accelerator = 4" in render_config(four, tiers)
    cpu_only = [s for s in specs if s.name != GPU_TASK]
    assert "accelerator" not in render_config(cpu_only, choose_tiers(size_specs(cpu_only)))


# -- the base AMI from the local cloud's SSM -----------------------------------------------


def test_the_gpu_base_resolves_and_a_region_without_it_is_a_clear_error(moto, monkeypatch):
    import boto3

    from factory import render as render_mod
    from factory.aws import Clients
    from factory.errors import AwsError
    from factory.local.aws.faults import Fault, arm, clear

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    spec = find_spec(GPU_TASK, SPECS)
    clients = Clients(region="us-east-1", endpoint_url=moto.endpoint)
    ami = render_mod.resolve_base_ami(spec, clients)
    ec2 = boto3.client("ec2", region_name="us-east-1", endpoint_url=moto.endpoint)
    assert "-ecs-gpu-" in ec2.describe_images(ImageIds=[ami])["Images"][0]["Name"]
    # A region AWS has not published the GPU AMI in answers ParameterNotFound.
    arm(moto.endpoint, Fault("ssm:GetParameter", code="ParameterNotFound"))
    try:
        with pytest.raises(AwsError) as err:
            render_mod.resolve_base_ami(spec, clients)
    finally:
        clear(moto.endpoint)
    assert "has no SSM parameter /aws/service/ecs/optimized-ami/amazon-linux-2023/gpu/recommended/image_id" in err.value.message
    assert "GPU-optimized AMI there" in err.value.message and "region:" in err.value.message


# -- one GPU bake on the local cloud, shared ---------------------------------------------


needs_local_cloud = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("packer") is None or not Path("/usr/sbin/dockerd").exists(),
    reason="the local cloud needs root, Packer, openssh-server and docker.io (make system-deps)",
)


@pytest.fixture(scope="module")
def gpu_bake(tmp_path_factory):
    """The GPU spec baked and registered once on a local cloud: (result, cloud, build dir, env)."""
    from factory.local import cloud as local_cloud

    work = tmp_path_factory.mktemp("gpu-bake")
    state = work / ".factory"
    lc = local_cloud.up(state, "us-east-1")
    env = dict(os.environ, FACTORY_STATE_DIR=str(state))
    try:
        proc = subprocess.run([FACTORY, "bake", GPU_TASK, "--json", "--cloud", "local", "--build-dir", str(work / "build")],
                              cwd=REPO, capture_output=True, text=True, env=env, timeout=900)
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
        yield json.loads(proc.stdout), lc, work / "build", env
    finally:
        local_cloud.down(state)


@pytest.mark.slow
@needs_local_cloud
def test_the_gpu_bake_proves_the_stack_and_tags_driver_and_cuda(gpu_bake):
    result, lc, build, _env = gpu_bake
    manifest = json.loads((build / GPU_TASK / "image-manifest.json").read_text())
    gpu = manifest["gpu"]
    assert gpu["ok"] is True and gpu["problems"] == []
    assert gpu["driver_version"] == "580.159.03" and gpu["cuda_version"] == "13.0"
    assert {"kernel", "nvidia-driver", "nvidia-fabricmanager"} <= set(gpu["locked"])
    assert gpu["ecs_enable_gpu_support"] == {"/var/lib/ecs/ecs.config": "true"}
    assert "nvidia" in gpu["docker_runtimes"]
    assert all(gpu["units"].values()) and "nvidia-kmod-load.service" in gpu["units"]
    assert {m["kernel"] for m in gpu["kernel_modules"]} == {gpu["kernel"]} and len(gpu["kernel_modules"]) == 3
    image = lc.clients("us-east-1").ec2().describe_images(ImageIds=[result["ami_id"]])["Images"][0]
    tags = {t["Key"]: t["Value"] for t in image["Tags"]}
    assert tags["factory:nvidia-driver"] == "580.159.03" and tags["factory:cuda"] == "13.0"
    assert tags["factory:nvidia-container-toolkit"] == gpu["container_toolkit_version"]
    ssm = lc.clients("us-east-1").ssm()
    base = ssm.get_parameter(Name=FAMILIES["al2023"].ssm_parameter("x86_64", "nvidia"))["Parameter"]["Value"]
    assert result["base_ami"] == base  # baked on the family's ECS GPU-optimized AMI
    log = Path(result["log"]).read_text()
    assert "The GPU stack check failed" not in log and "NVIDIA driver 580.159.03" in log


@pytest.mark.slow
@needs_local_cloud
def test_the_gpu_tier_registers_with_the_nvidia_image_type_and_its_ami(gpu_bake):
    result, lc, _build, _env = gpu_bake
    batch = lc.clients("us-east-1").batch()
    ce = batch.describe_compute_environments(computeEnvironments=[result["compute_environment"]])["computeEnvironments"][0]
    cr = ce["computeResources"]
    assert cr["ec2Configuration"] == [{"imageType": "ECS_AL2023_NVIDIA", "imageIdOverride": result["ami_id"]}]
    assert sorted(cr["instanceTypes"]) == ["g5.2xlarge", "g5.xlarge"]
    assert result["job_queue"] == f"factory-{GPU_TASK}"


@pytest.mark.slow
@needs_local_cloud
def test_the_nextflow_config_names_the_registered_gpu_queue(gpu_bake):
    _result, _lc, _build, env = gpu_bake
    proc = subprocess.run([FACTORY, "nextflow-config", GPU_TASK, "--check", "--cloud", "local", "--specs-dir", str(SPECS)],
                          cwd=REPO, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "withName: 'DORADO_BASECALL' { queue = 'factory-dorado-basecall'; accelerator = 1 }" in proc.stdout


# -- a role that breaks a version lock fails the bake's GPU check -------------------------


@pytest.fixture(scope="module")
def gpu_host(tmp_path_factory):
    """A build host of its own made to look like the AL2023 ECS GPU-optimized AMI (no Packer)."""
    from buildhost_fixtures import start_host

    from factory.local.builder.family_root import look_like
    from factory.local.builder.gpu_base import look_like_gpu_base

    h = start_host(tmp_path_factory.mktemp("gpu-host") / "host", docker=True)
    try:
        look_like(h, "al2023")
        look_like_gpu_base(h, "al2023")
        yield h
    finally:
        h.stop(remove=True)


CARELESS_ROLE = """---
# What a careless role does on a GPU base: clears the version locks before an update.
- name: Clear the version locks
  ansible.builtin.command:
    argv: [dnf, versionlock, clear]
"""


@pytest.mark.slow
@needs_local_cloud
def test_a_role_that_clears_the_locks_fails_the_gpu_check(gpu_host, tmp_path):
    from buildhost_fixtures import role_playbook, run_playbook, show

    ev = {"ansible_python_interpreter": gpu_host.python_interpreter, "factory_family": "al2023", "gpu_stack_enabled": True}
    whole = run_playbook(gpu_host, role_playbook(tmp_path, "gpu_stack", "gpu_check"), ev, tmp_path)
    assert whole.returncode == 0, show(whole)  # the stand-in is a whole GPU stack: the check passes
    assert "NVIDIA driver 580.159.03 (CUDA 13.0)" in whole.stdout
    role = tmp_path / "roles" / "careless_update" / "tasks"
    role.mkdir(parents=True)
    (role / "main.yml").write_text(CARELESS_ROLE)
    broken = run_playbook(gpu_host, role_playbook(tmp_path, "careless_update", "gpu_check"), ev, tmp_path)
    assert broken.returncode != 0, show(broken)
    assert "The GPU stack check failed" in broken.stdout
    assert "nvidia-driver is not version-locked any more" in broken.stdout and "kernel is not version-locked" in broken.stdout
    report = json.loads(gpu_host.path("/var/lib/factory/gpu-check.json").read_text())
    assert report["ok"] is False and report["locked"] == []
    # A base with no locks (AL2's GPU AMI locks nothing): gpu_stack, first in the play, adds
    # them for kernel and the driver packages, and the check passes again.
    relocked = run_playbook(gpu_host, role_playbook(tmp_path, "gpu_stack", "gpu_check"), ev, tmp_path)
    assert relocked.returncode == 0, show(relocked)
    assert "Lock the kernel and the NVIDIA driver packages where the base did not" in relocked.stdout
    report = json.loads(gpu_host.path("/var/lib/factory/gpu-check.json").read_text())
    assert report["ok"] is True and {"kernel", "nvidia-driver", "nvidia-persistenced"} <= set(report["locked"])
    assert "nvidia-container-toolkit" not in report["locked"]  # not the driver's version: not locked by factory


def test_the_local_cloud_publishes_a_new_gpu_base(moto):
    """`factory local publish-base al2023 --accelerator nvidia`: AWS releasing a new GPU AMI."""
    import boto3

    from factory.errors import UsageError
    from factory.local.aws.publish import publish_base

    kw = {"region_name": "us-east-1", "endpoint_url": moto.endpoint, "aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
    ssm, ec2 = boto3.client("ssm", **kw), boto3.client("ec2", **kw)
    done = publish_base(moto.endpoint, "al2023", accelerator="nvidia")
    assert done["parameter"] == f"{ECS}/amazon-linux-2023/gpu/recommended/image_id"
    assert ssm.get_parameter(Name=done["parameter"])["Parameter"]["Value"] == done["ami_id"]
    assert ec2.describe_images(ImageIds=[done["ami_id"]])["Images"][0]["Name"].startswith("al2023-ami-ecs-gpu-hvm-")
    with pytest.raises(UsageError, match="no arm64 ECS GPU-optimized AMI"):
        publish_base(moto.endpoint, "al2023", "arm64", accelerator="nvidia")


# -- the check's parts, without a build host ------------------------------------------------


def _check_module():
    import importlib.util

    path = REPO / "ansible" / "roles" / "gpu_stack" / "files" / "gpu_stack_check.py"
    spec = importlib.util.spec_from_file_location("gpu_stack_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_check_reads_a_modules_modinfo_as_binutils_does(tmp_path):
    import lzma

    from factory.local.builder.gpu_base import module_object

    check = _check_module()
    obj = module_object("nvidia-uvm", "580.159.03", "6.1.158-180.294.amzn2023.x86_64")
    ko = tmp_path / "nvidia-uvm.ko"
    ko.write_bytes(obj)
    (tmp_path / "nvidia-uvm.ko.xz").write_bytes(lzma.compress(obj))
    for path in (ko, tmp_path / "nvidia-uvm.ko.xz"):
        info = check.modinfo(str(path))
        assert info["version"] == "580.159.03" and info["vermagic"].split()[0] == "6.1.158-180.294.amzn2023.x86_64"
    if shutil.which("readelf"):  # an independent reader of the stand-in's ELF object
        shown = subprocess.run(["readelf", "-p", ".modinfo", str(ko)], capture_output=True, text=True, check=True).stdout
        assert "version=580.159.03" in shown and "name=nvidia_uvm" in shown
    (tmp_path / "junk.ko").write_bytes(b"not an object")
    with pytest.raises(ValueError):
        check.modinfo(str(tmp_path / "junk.ko"))


def test_the_check_finds_modules_for_another_kernel_and_parses_both_lock_formats(tmp_path):
    import lzma

    from factory.local.builder.gpu_base import dkms_archive, module_object

    check = _check_module()
    old, new = "6.1.100-1.amzn2023.x86_64", "6.1.158-180.294.amzn2023.x86_64"
    extra = tmp_path / "lib" / "modules" / old / "extra"
    extra.mkdir(parents=True)
    (extra / "nvidia.ko.xz").write_bytes(lzma.compress(module_object("nvidia", "580.159.03", old)))
    archive = tmp_path / "var" / "lib" / "dkms-archive" / "nvidia-open"
    archive.mkdir(parents=True)
    (archive / f"nvidia-open-580.159.03-kernel{new}-x86_64.dkms.tar.gz").write_bytes(dkms_archive("nvidia-open", "580.159.03", new))
    found = {m["path"]: m for m in check.modules(str(tmp_path), new, "x86_64")}
    assert found[f"/lib/modules/{old}/extra/nvidia.ko.xz"]["kernel"] == old  # stale: a kernel the AMI does not boot
    assert found[f"/var/lib/dkms-archive/nvidia-open/nvidia-open-580.159.03-kernel{new}-x86_64.dkms.tar.gz"]["version"] == "580.159.03"
    assert check.cuda_for("580.159.03") == "13.0" and check.cuda_for("550.163.01") == "12.4" and check.cuda_for("390.1") is None
    dnf = "Last metadata expiration check: 0:01:02 ago.\nkernel-0:6.1.158-180.294.amzn2023.*\nnvidia-driver-3:580.159.03-1.amzn2023.*\n"
    yum = "Loaded plugins: extras_suggestions, versionlock\n0:kernel-4.14.355-275.570.amzn2.*\n0:nvidia-fabric-manager-550.163.01-1.*\nversionlock list done\n"
    lister = tmp_path / "lister"
    for text, names in ((dnf, {"kernel", "nvidia-driver"}), (yum, {"kernel", "nvidia-fabric-manager"})):
        lister.write_text(text)
        assert check.locked_names(["cat", str(lister)]) == (names, None)


def test_a_gpu_spec_renders_for_a_cheap_cpu_builder(tmp_path, monkeypatch):
    """The builder of a GPU image is the usual CPU instance (no GPU is needed to bake), and
    only a GPU spec's variables name the accelerator (a CPU spec's image hash is unchanged)."""
    from factory import render as render_mod
    from factory.sizing import size_task

    monkeypatch.setenv(render_mod.CALLER_CIDR_ENV, "203.0.113.7/32")
    gpu = find_spec(GPU_TASK, SPECS)
    variables = render_mod.render(gpu, size_task(gpu), "ami-0123456789abcdef0", tmp_path / "gpu").variables
    assert variables["accelerator"] == "nvidia" and variables["instance_type"] == "t3.medium"
    cpu = find_spec("salmon-quant", SPECS)
    assert "accelerator" not in render_mod.render(cpu, size_task(cpu), "ami-0123456789abcdef0", tmp_path / "cpu").variables
    if shutil.which("packer"):
        done = subprocess.run(["packer", "validate", "."], cwd=tmp_path / "gpu", capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
