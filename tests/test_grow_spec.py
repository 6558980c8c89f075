"""`storage.grow`: the spec field, validate, size, tiers, and factory/grow.py's data
(the launch template's data volume, the instance's IAM policy, checked by moto's IAM)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from tests.conftest import SPECS

BENCH = "input_gib,index_gib,scratch_gib,output_gib\n1,2,1,0.5\n2,2,2,1\n4,2,4,2\n"


def write(tmp_path: Path, grow: str = "  grow:\n    max_gib: 200\n", image: str = "", name: str = "grow-task") -> Path:
    (tmp_path / "bench.csv").write_text(BENCH)
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"name: {name}\ndescription: A growing task.\n{image}"
        "storage:\n  benchmarks: bench.csv\n  max_input_gib: 10\n  concurrent_tasks: 2\n" + grow
    )
    return path


def test_grow_spec_loads_with_defaults(tmp_path):
    from factory.spec import GrowSpec, load_spec

    spec = load_spec(write(tmp_path))
    assert spec.storage.grow == GrowSpec(max_gib=200, volume_type="gp3")
    assert spec.to_json()["storage"]["grow"] == {"max_gib": 200, "volume_type": "gp3"}


def test_a_spec_without_grow_is_unchanged(tmp_path):
    """No `grow` key in the normalised spec, so its spec hash (and image) stay as they were."""
    from factory.sizing import size_task
    from factory.spec import load_spec

    spec = load_spec(write(tmp_path, grow=""))
    assert spec.storage.grow is None
    assert "grow" not in spec.to_json()["storage"]
    plan = size_task(spec)
    assert plan.to_json()["grow"] is None and plan.reserve_gib == 5.0 and plan.ami_min_gib == 30


@pytest.mark.parametrize("grow,image,field,words", [
    ("  grow:\n    max_gib: 10\n", "", "storage.grow.max_gib", "less than the data volume"),
    ("  grow: {}\n", "", "storage.grow.max_gib", "is required"),
    ("  grow:\n    max_gib: 200\n    volume_type: io2\n", "", "storage.grow.volume_type", "must be one of gp3, gp2"),
    ("  grow:\n    max_gib: 200\n    size: 3\n", "", "storage.grow.size", "unknown key"),
    ("  grow:\n    max_gib: 0\n", "", "storage.grow.max_gib", "must be >= 1"),
    ("  grow:\n    max_gib: 200\n", "image:\n  base: ecs-al1\n", "storage.grow", "devicemapper thin pool"),
    ("  grow:\n    max_gib: 200\n", "image:\n  volume: ami\n", "storage.grow", "image.volume: launch-template"),
])
def test_validate_refuses_bad_grow(cli, tmp_path, grow, image, field, words):
    path = write(tmp_path, grow=grow, image=image)
    result = cli("validate", path, "--json")
    assert result.exit_code == 1, result.output
    errors = json.loads(result.stdout)["files"][0]["errors"]
    assert any(e["field"] == field and words in e["message"] for e in errors), errors


def test_size_grows_a_data_volume_without_the_root_floor(cli, tmp_path):
    path = write(tmp_path, grow="  grow:\n    max_gib: 500\n    volume_type: gp2\n")
    data = json.loads(cli("size", "grow-task", "--specs-dir", tmp_path, "--json").stdout)
    without = json.loads(cli("size", "--benchmarks", tmp_path / "bench.csv", "--max-input-gib", "10",
                             "--concurrency", "2", "--json").stdout)
    need = data["breakdown"]["need_gib"]
    assert data["breakdown"]["reserve_gib"] == 1.0 and data["breakdown"]["ami_min_gib"] == 1
    assert data["volume_gib"] == int(-(-(need * 1.2 + 1.0) // 1))
    assert data["grow"] == {"data_volume_gib": data["volume_gib"], "max_gib": 500, "volume_type": "gp2",
                            "can_add_gib": 500 - data["volume_gib"]}
    assert without["grow"] is None
    text = cli("size", "grow-task", "--specs-dir", tmp_path).stdout
    assert "data volume" in text and "grows to" in text and "500" in text
    assert path.exists()


def test_a_small_task_gets_a_small_data_volume(tmp_path):
    """No floor from the base's 30 GiB root snapshot: the data volume is a fresh one."""
    from factory.sizing import size_task
    from factory.spec import load_spec

    (tmp_path / "tiny.yaml").write_text(textwrap.dedent("""\
        name: tiny
        description: A small growing task.
        storage:
          max_input_gib: 1
          container_images_gib: 0.5
          footprint: {index_gib: 0.5, scratch_gib: 1, output_gib: 0.5}
          grow: {max_gib: 100}
        """))
    plan = size_task(load_spec(tmp_path / "tiny.yaml"))
    assert plan.volume_gib == 6  # (1+0.5+1+0.5+0.5) * 1.2 + 1 = 5.2 -> 6, not 30


def test_growing_and_fixed_tasks_do_not_share_a_tier(tmp_path):
    from factory.spec import load_specs
    from factory.tiers import tiers_for

    write(tmp_path, name="grow-a")
    write(tmp_path, name="grow-b", grow="  grow:\n    max_gib: 300\n")
    write(tmp_path, name="fixed", grow="")
    tiers, _ = tiers_for(load_specs([tmp_path]))
    by_task = {t: tier for tier in tiers for t in tier.tasks}
    assert len({by_task["grow-a"].name, by_task["grow-b"].name, by_task["fixed"].name}) == 3
    assert by_task["fixed"].group_dict["storage.grow.max_gib"] is None
    json.dumps([t.to_json() for t in tiers])  # the group stays plain data


def test_data_volume_mapping(tmp_path):
    from factory.grow import data_volume_mapping, launch_template_tags
    from factory.spec import load_spec

    spec = load_spec(write(tmp_path))
    assert data_volume_mapping(spec, 71) == {
        "DeviceName": "/dev/xvdb",
        "Ebs": {"VolumeSize": 71, "VolumeType": "gp3", "Encrypted": True, "DeleteOnTermination": True},
    }
    tags = launch_template_tags(spec)
    assert [t["ResourceType"] for t in tags] == ["instance", "volume"]
    assert {"Key": "factory:grow", "Value": "true"} in tags[0]["Tags"]
    with pytest.raises(ValueError, match="storage.grow is not set"):
        data_volume_mapping(load_spec(write(tmp_path, grow="", name="plain")), 50)


def test_the_mapping_is_one_a_launch_template_takes(moto, tmp_path):
    """moto's EC2 keeps the launch template's data volume as given (botocore validates the shape)."""
    import boto3

    from factory.grow import data_volume_mapping, launch_template_tags
    from factory.spec import load_spec

    spec = load_spec(write(tmp_path))
    ec2 = boto3.client("ec2", region_name="us-east-1", endpoint_url=moto.endpoint,
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    ec2.create_launch_template(
        LaunchTemplateName="factory-grow-test",
        LaunchTemplateData={"BlockDeviceMappings": [data_volume_mapping(spec, 71)], "TagSpecifications": launch_template_tags(spec)},
    )
    data = ec2.describe_launch_template_versions(LaunchTemplateName="factory-grow-test")["LaunchTemplateVersions"][0]["LaunchTemplateData"]
    assert data["BlockDeviceMappings"][0]["Ebs"]["VolumeSize"] == 71


def test_instance_policy_is_scoped_by_tag(moto):
    import boto3

    from factory.grow import instance_policy

    policy = instance_policy("eu-west-2")
    by_sid = {s["Sid"]: s for s in policy["Statement"]}
    create = by_sid["FactoryGrowCreateTaggedEncryptedVolumes"]
    assert create["Condition"]["StringEquals"] == {"aws:RequestTag/factory:grow": "true"}
    assert create["Condition"]["Bool"] == {"ec2:Encrypted": "true"}
    assert by_sid["FactoryGrowTagVolumesOnlyAtCreation"]["Condition"] == {"StringEquals": {"ec2:CreateAction": "CreateVolume"}}
    for sid in ("FactoryGrowAttachOnlyGrowVolumes", "FactoryGrowAttachAndKeepOnlyToTheCallingInstance", "FactoryGrowMarkTheCallingInstance"):
        assert by_sid[sid]["Condition"]["StringEquals"] == {"aws:ResourceTag/factory:grow": "true"}
    # an instance is changed only by itself: every statement on instances names the caller
    on_instances = [s for s in policy["Statement"] if any(":instance/" in r for r in ([s["Resource"]] if isinstance(s["Resource"], str) else s["Resource"]))]
    assert {s["Sid"] for s in on_instances} == {"FactoryGrowAttachAndKeepOnlyToTheCallingInstance", "FactoryGrowMarkTheCallingInstance"}
    for s in on_instances:
        assert s["Condition"]["StringLike"] == {"ec2:SourceInstanceARN": "arn:aws:ec2:eu-west-2:*:instance/${ec2:InstanceID}"}, s
        assert not any(":volume/" in r for r in ([s["Resource"]] if isinstance(s["Resource"], str) else s["Resource"]))
    # the agent never deletes a volume (prune does, with its caller's policy)
    assert not [s for s in policy["Statement"] if "ec2:DeleteVolume" in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])]
    # only the Describe calls, which have no resource-level permissions, are unscoped
    assert [s["Sid"] for s in policy["Statement"] if s["Resource"] == "*"] == ["FactoryGrowDescribe"]
    assert all(":eu-west-2:" in r for s in policy["Statement"] if s["Resource"] != "*"
               for r in ([s["Resource"]] if isinstance(s["Resource"], str) else s["Resource"]))
    iam = boto3.client("iam", region_name="us-east-1", endpoint_url=moto.endpoint,
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    iam.create_policy(PolicyName="factory-grow-instance", PolicyDocument=json.dumps(policy))  # moto checks the grammar


def test_repo_specs_still_valid(cli):
    assert cli("validate", SPECS).exit_code == 0


def test_render_turns_the_grow_agent_on_only_for_a_growing_task(tmp_path, monkeypatch):
    import os
    import shutil
    import subprocess
    import sys

    from factory import render as render_mod
    from factory.sizing import size_task
    from factory.spec import load_spec

    monkeypatch.setenv(render_mod.CALLER_CIDR_ENV, "203.0.113.7/32")
    grow = load_spec(write(tmp_path))
    plain = load_spec(write(tmp_path, grow="", name="plain"))
    result = render_mod.render(grow, size_task(grow), "ami-0123456789abcdef0", tmp_path / "out")
    assert {k: result.variables[k] for k in ("grow_enabled", "grow_max_gib", "grow_volume_type")} == \
        {"grow_enabled": True, "grow_max_gib": 200, "grow_volume_type": "gp3"}
    assert result.variables["volume_gib"] == 30  # the root stays the base's; the data volume is the launch template's
    assert "ansible/roles/grow_agent/files/factory_grow/agent.py" in result.files
    assert not {k for k in render_mod.variables_for(plain, size_task(plain), "ami-0123456789abcdef0",
                                                    render_mod.BuildTarget.aws()) if k.startswith("grow_")}
    if shutil.which("packer"):
        env = dict(os.environ, PATH=f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}", CHECKPOINT_DISABLE="1")
        v = subprocess.run(["packer", "validate", "."], cwd=result.out_dir, capture_output=True, text=True, env=env, timeout=120)
        assert v.returncode == 0, v.stdout + v.stderr


def test_iam_policy_for_instance_prints_the_grow_policy(cli):
    from factory.grow import instance_policy

    r = cli("iam-policy", "--for", "instance", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout) == instance_policy()
    text = cli("iam-policy", "--for", "instance").stdout
    assert "batch.instance_role" in text and "FactoryGrowCreateTaggedEncryptedVolumes" in text

