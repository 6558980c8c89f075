"""`factory prune`'s reach over AMIs, on the local cloud over HTTP: a refused deregistration
is reported and the rest of prune goes on; `--keep` counts available AMIs only; an AMI
something else uses (DescribeImageReferences) is kept."""

from __future__ import annotations

import json
import time

import boto3
import pytest

from tests.conftest import SPECS

REGION = "us-east-1"
TASK = "salmon-quant"


@pytest.fixture
def ec2(moto, monkeypatch):
    moto.reset()
    for var in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    return boto3.client("ec2", region_name=REGION, endpoint_url=moto.endpoint, aws_access_key_id="testing", aws_secret_access_key="testing")


@pytest.fixture
def prune(moto, cli):
    """`factory prune --json ARGS` against the local cloud: (exit code, {ami id: change})."""
    env = {"AWS_ENDPOINT_URL": moto.endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}

    def run(*args: str) -> tuple[int, dict[str, dict], list[dict]]:
        r = cli("prune", "--json", "--specs-dir", SPECS, *args, env=env)
        assert "Traceback" not in r.stderr, r.stderr
        changes = json.loads(r.stdout)[REGION]["changes"]
        return r.exit_code, {c["name"]: c for c in changes if c["resource"] == "ami"}, changes

    return run


def bake(ec2, task: str = TASK) -> str:
    """An AMI as `factory bake` leaves it (tagged factory:task), one second after the last."""
    time.sleep(1.1)  # CreationDate has whole seconds: keep the order unambiguous
    base = ec2.describe_images(Owners=["amazon"], Filters=[{"Name": "name", "Values": ["amzn2-ami-ecs-hvm-*x86_64-ebs"]}])["Images"][0]["ImageId"]
    builder = ec2.run_instances(ImageId=base, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    ami = ec2.create_image(InstanceId=builder, Name=f"factory-{task}-{time.time_ns()}")["ImageId"]
    ec2.create_tags(Resources=[ami], Tags=[{"Key": "factory:task", "Value": task}, {"Key": "factory:image-hash", "Value": "test"}])
    ec2.terminate_instances(InstanceIds=[builder])
    return ami


def images(ec2) -> set[str]:
    return {i["ImageId"] for i in ec2.describe_images(Owners=["self"], Filters=[{"Name": "tag-key", "Values": ["factory:task"]}])["Images"]}


def test_a_refused_deregistration_is_reported_and_prune_goes_on(ec2, moto, prune):
    """AWS refuses DeregisterImage for an AMI with deregistration protection: that AMI is
    reported failed (exit 1), the other AMIs and a leaked grow volume are still removed."""
    from factory.local.aws.faults import Fault, arm

    old = [bake(ec2) for _ in range(3)]
    newest = bake(ec2)
    gone = ec2.run_instances(ImageId=newest, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    volume = ec2.create_volume(AvailabilityZone=f"{REGION}a", Size=10, Encrypted=True, TagSpecifications=[{"ResourceType": "volume", "Tags": [
        {"Key": "factory:grow", "Value": "true"}, {"Key": "factory:task", "Value": TASK}, {"Key": "factory:instance", "Value": gone}]}])["VolumeId"]
    ec2.terminate_instances(InstanceIds=[gone])
    arm(moto.endpoint, Fault("ec2:DeregisterImage", kind="error", code="InvalidParameterValue", times=1))

    code, amis, changes = prune("--keep", "1", "--apply")
    assert code == 1
    # newest first: the first AMI prune deregisters is the one refused
    assert [amis[a]["action"] for a in reversed(old)] == ["failed", "delete", "delete"], amis
    assert "AWS refused" in amis[old[-1]]["reason"] and "InvalidParameterValue" in amis[old[-1]]["reason"]
    assert {(c["name"], c["action"]) for c in changes if c["resource"] == "volume"} == {(volume, "delete")}
    assert images(ec2) == {old[-1], newest}
    again, amis, _ = prune("--keep", "1", "--apply")  # the next prune finishes it
    assert again == 0 and amis[old[-1]]["action"] == "delete" and images(ec2) == {newest}


def test_keep_counts_only_available_amis(ec2, prune):
    """A disabled AMI is newer than the one the task can run: it does not take a --keep place."""
    older, runnable, disabled = bake(ec2), bake(ec2), bake(ec2)
    ec2.disable_image(ImageId=disabled)
    code, amis, _ = prune("--keep", "1")
    assert code == 0
    assert runnable not in amis and amis[older]["action"] == "delete"
    assert amis[disabled]["action"] == "delete" and "disabled" in amis[disabled]["reason"]


def test_an_ami_something_else_uses_is_kept(ec2, moto, prune):
    """EC2 is asked what uses each AMI prune would deregister (DescribeImageReferences): an
    instance launched from it, a launch template of someone else's, an SSM parameter."""
    ssm = boto3.client("ssm", region_name=REGION, endpoint_url=moto.endpoint, aws_access_key_id="testing", aws_secret_access_key="testing")
    by_instance, by_template, by_parameter, unused = (bake(ec2) for _ in range(4))
    bake(ec2)  # the newest: kept by --keep 1
    instance = ec2.run_instances(ImageId=by_instance, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    ec2.stop_instances(InstanceIds=[instance])  # a stopped instance still needs its AMI to start again
    template = ec2.create_launch_template(LaunchTemplateName="someone-elses", LaunchTemplateData={"ImageId": by_template})["LaunchTemplate"]
    ssm.put_parameter(Name="/team/golden-ami", Value=by_parameter, Type="String")

    code, amis, _ = prune("--keep", "1", "--apply")
    assert code == 0
    assert amis[unused]["action"] == "delete"
    assert {a: amis[a]["action"] for a in (by_instance, by_template, by_parameter)} == dict.fromkeys((by_instance, by_template, by_parameter), "unchanged")
    assert f"instance/{instance}" in amis[by_instance]["reason"]
    assert f"launch-template/{template['LaunchTemplateId']}" in amis[by_template]["reason"]
    assert "parameter/team/golden-ami" in amis[by_parameter]["reason"]
    assert {by_instance, by_template, by_parameter} <= images(ec2) and unused not in images(ec2)


def test_the_local_cloud_answers_describe_image_references_as_aws(ec2):
    """AWS's limits: 1 to 10 AMIs a call; IncludeAllResourceTypes or ResourceTypes; instances
    filtered by the state-name option."""
    from botocore.exceptions import ClientError

    ami = bake(ec2)
    running = ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    everything = ec2.describe_image_references(ImageIds=[ami], IncludeAllResourceTypes=True)["ImageReferences"]
    assert everything == [{"ImageId": ami, "ResourceType": "ec2:Instance", "Arn": f"arn:aws:ec2:{REGION}:123456789012:instance/{running}"}]
    stopped_only = [{"ResourceType": "ec2:Instance", "ResourceTypeOptions": [{"OptionName": "state-name", "OptionValues": ["stopped"]}]}]
    assert ec2.describe_image_references(ImageIds=[ami], ResourceTypes=stopped_only)["ImageReferences"] == []
    with pytest.raises(ClientError, match="InvalidParameterValue"):
        ec2.describe_image_references(ImageIds=[ami] * 11, IncludeAllResourceTypes=True)
    with pytest.raises(ClientError, match="MissingParameter"):
        ec2.describe_image_references(ImageIds=[ami])


def test_a_refused_deregistration_is_an_error_on_stderr(ec2, moto, cli):
    from factory.local.aws.faults import Fault, arm

    old, newest = bake(ec2), bake(ec2)
    arm(moto.endpoint, Fault("ec2:DeregisterImage", kind="error", code="InvalidParameterValue", times=1))
    env = {"AWS_ENDPOINT_URL": moto.endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "COLUMNS": "250"}
    r = cli("prune", "--keep", "1", "--apply", "--specs-dir", SPECS, env=env)
    assert r.exit_code == 1 and "Traceback" not in r.stderr
    assert f"could not delete ami {old}" in r.stderr and "InvalidParameterValue" in r.stderr and old not in r.stdout
    assert newest not in r.stdout + r.stderr
