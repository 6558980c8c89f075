"""The local cloud's own layer around moto: AWS's rules, pages and faults (docs/local-cloud.md).

Each test talks to the real server (`factory.local.aws.aws_server`, started by MotoServer) over
HTTP with boto3, as factory and Packer do. Each rule is checked both ways: what AWS
refuses is refused, what AWS allows still works.
"""

from __future__ import annotations

import time

import pytest
from botocore.exceptions import ClientError

from factory.aws import Clients
from factory.local.aws import faults
from factory.local.aws.moto_server import MotoServer

REGION = "us-east-1"


@pytest.fixture(scope="module")
def server():
    s = MotoServer.start(state_delay=0.6, snapshot_release_delay=1.0)
    yield s
    s.stop()


@pytest.fixture
def aws(server, monkeypatch):
    server.reset()
    faults.clear(server.endpoint)
    for var in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    return Clients(REGION, server.endpoint)


def code(exc: ClientError) -> str:
    return exc.response["Error"]["Code"]


def compute_resources(aws: Clients, strategy: str = "BEST_FIT_PROGRESSIVE", lt_version: str = "1") -> dict:
    ec2, iam = aws.ec2(), aws.client("iam")
    iam.create_role(RoleName="ecsInstanceRole", AssumeRolePolicyDocument="{}")
    profile = iam.create_instance_profile(InstanceProfileName="ecsInstanceRole")["InstanceProfile"]["Arn"]
    ec2.create_launch_template(LaunchTemplateName="tpl", LaunchTemplateData={"ImageId": "ami-12345678"})
    return {
        "type": "EC2",
        "allocationStrategy": strategy,
        "minvCpus": 0,
        "maxvCpus": 4,
        "instanceTypes": ["optimal"],
        "subnets": [ec2.describe_subnets()["Subnets"][0]["SubnetId"]],
        "securityGroupIds": [ec2.describe_security_groups()["SecurityGroups"][0]["GroupId"]],
        "instanceRole": profile,
        "launchTemplate": {"launchTemplateName": "tpl", "version": lt_version},
    }


def status_of(aws: Clients, name: str) -> str | None:
    found = aws.batch().describe_compute_environments(computeEnvironments=[name])["computeEnvironments"]
    return found[0]["status"] if found else None


def wait_status(aws: Clients, name: str, want: str | None, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while status_of(aws, name) != want:
        assert time.monotonic() < deadline, f"{name} never reached {want} (is {status_of(aws, name)})"
        time.sleep(0.1)


def make_ce(aws: Clients, name: str = "env", **kw) -> dict:
    cr = compute_resources(aws, **kw)
    aws.batch().create_compute_environment(computeEnvironmentName=name, type="MANAGED", state="ENABLED", computeResources=cr)
    return cr


# -- Batch -----------------------------------------------------------------------------


def test_no_service_role_means_the_service_linked_role_and_creating_before_valid(aws):
    make_ce(aws)
    ce = aws.batch().describe_compute_environments(computeEnvironments=["env"])["computeEnvironments"][0]
    assert ":role/aws-service-role/batch.amazonaws.com/" in ce["serviceRole"]
    assert ce["status"] == "CREATING"
    wait_status(aws, "env", "VALID")


def test_update_stores_compute_resources_and_update_policy(aws):
    make_ce(aws)
    wait_status(aws, "env", "VALID")
    aws.ec2().create_launch_template_version(LaunchTemplateName="tpl", LaunchTemplateData={"ImageId": "ami-87654321"})
    aws.batch().update_compute_environment(
        computeEnvironment="env",
        computeResources={"launchTemplate": {"launchTemplateName": "tpl", "version": "2"}, "updateToLatestImageVersion": True, "maxvCpus": 8, "instanceTypes": ["c6i"]},
        updatePolicy={"jobExecutionTimeoutMinutes": 2880, "terminateJobsOnUpdate": False},
    )
    # Right after the call a describe may still show the old state (eventual consistency).
    wait_status(aws, "env", "UPDATING")
    wait_status(aws, "env", "VALID")
    ce = aws.batch().describe_compute_environments(computeEnvironments=["env"])["computeEnvironments"][0]
    cr = ce["computeResources"]
    # updateToLatestImageVersion is stored but, as on AWS, not part of a describe (ComputeResource has no such member)
    assert cr["launchTemplate"]["version"] == "2"
    assert cr["maxvCpus"] == 8 and cr["instanceTypes"] == ["c6i"]
    assert ce["updatePolicy"] == {"jobExecutionTimeoutMinutes": 2880, "terminateJobsOnUpdate": False}


@pytest.mark.parametrize("default", ["default_arm64", "default_x86_64"])
def test_batch_chooses_the_instance_types_for_default_arm64_and_default_x86_64(aws, default):
    """ComputeResource.instanceTypes documents both; moto alone says "Instance type default_arm64 does not exist"."""
    cr = compute_resources(aws)
    cr.update(instanceTypes=[default], minvCpus=2)  # minvCpus > 0: instances are launched at once
    aws.batch().create_compute_environment(computeEnvironmentName="env", type="MANAGED", state="ENABLED", computeResources=cr)
    wait_status(aws, "env", "VALID")
    ce = aws.batch().describe_compute_environments(computeEnvironments=["env"])["computeEnvironments"][0]
    assert ce["computeResources"]["instanceTypes"] == [default]
    family = {"default_arm64": "m6g.", "default_x86_64": "m6i."}[default]
    launched = [i["InstanceType"] for r in aws.ec2().describe_instances()["Reservations"] for i in r["Instances"]]
    assert launched and all(t.startswith(family) for t in launched)
    cr["instanceTypes"] = ["default_riscv"]
    with pytest.raises(ClientError, match="Instance type default_riscv does not exist"):
        aws.batch().create_compute_environment(computeEnvironmentName="env2", type="MANAGED", state="ENABLED", computeResources=cr)


def test_an_empty_key_pair_removes_it(aws):
    cr = compute_resources(aws)
    cr["ec2KeyPair"] = "mine"
    aws.batch().create_compute_environment(computeEnvironmentName="env", type="MANAGED", state="ENABLED", computeResources=cr)
    wait_status(aws, "env", "VALID")
    aws.batch().update_compute_environment(computeEnvironment="env", computeResources={"ec2KeyPair": ""})
    wait_status(aws, "env", "VALID")
    time.sleep(0.7)
    ce = aws.batch().describe_compute_environments(computeEnvironments=["env"])["computeEnvironments"][0]
    assert "ec2KeyPair" not in ce["computeResources"]


def test_infrastructure_update_refused_with_best_fit_or_a_regular_role_but_scaling_allowed(aws):
    make_ce(aws, strategy="BEST_FIT")
    wait_status(aws, "env", "VALID")
    with pytest.raises(ClientError) as exc:
        aws.batch().update_compute_environment(computeEnvironment="env", computeResources={"launchTemplate": {"launchTemplateName": "tpl", "version": "1"}})
    assert code(exc.value) == "ClientException" and "launchTemplate" in str(exc.value) and "BEST_FIT_PROGRESSIVE" in str(exc.value)
    aws.batch().update_compute_environment(computeEnvironment="env", computeResources={"maxvCpus": 16})  # scaling is always allowed

    iam = aws.client("iam")
    role = iam.create_role(RoleName="AWSBatchServiceRole", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    aws.batch().create_compute_environment(
        computeEnvironmentName="regular", type="MANAGED", state="ENABLED", serviceRole=role,
        computeResources=aws.batch().describe_compute_environments(computeEnvironments=["env"])["computeEnvironments"][0]["computeResources"]
        | {"allocationStrategy": "BEST_FIT_PROGRESSIVE"},
    )
    wait_status(aws, "regular", "VALID")
    with pytest.raises(ClientError) as exc:
        aws.batch().update_compute_environment(computeEnvironment="regular", computeResources={"instanceTypes": ["c6i"]})
    assert "Service Linked Role" in str(exc.value)


def test_no_update_while_updating_and_delete_only_when_disabled_and_unrelated(aws):
    make_ce(aws)
    batch = aws.batch()
    with pytest.raises(ClientError, match="CREATING"):
        batch.update_compute_environment(computeEnvironment="env", state="DISABLED")
    with pytest.raises(ClientError, match="not VALID"):
        batch.create_job_queue(jobQueueName="q", state="ENABLED", priority=1, computeEnvironmentOrder=[{"order": 1, "computeEnvironment": "env"}])
    wait_status(aws, "env", "VALID")
    batch.create_job_queue(jobQueueName="q", state="ENABLED", priority=1, computeEnvironmentOrder=[{"order": 1, "computeEnvironment": "env"}])
    with pytest.raises(ClientError, match="ENABLED"):
        batch.delete_compute_environment(computeEnvironment="env")
    batch.update_compute_environment(computeEnvironment="env", state="DISABLED")
    time.sleep(0.7)  # UPDATING, then VALID
    with pytest.raises(ClientError, match="found existing JobQueue relationship"):
        batch.delete_compute_environment(computeEnvironment="env")
    with pytest.raises(ClientError, match="ENABLED"):
        batch.delete_job_queue(jobQueue="q")
    batch.update_job_queue(jobQueue="q", state="DISABLED")
    time.sleep(0.7)
    batch.delete_job_queue(jobQueue="q")
    assert batch.describe_job_queues(jobQueues=["q"])["jobQueues"][0]["status"] == "DELETING"
    time.sleep(0.7)
    assert batch.describe_job_queues(jobQueues=["q"])["jobQueues"] == []
    batch.delete_compute_environment(computeEnvironment="env")
    wait_status(aws, "env", "DELETING")
    wait_status(aws, "env", None)


# -- EC2 -------------------------------------------------------------------------------


def test_delete_launch_template_versions_reports_what_it_kept(aws):
    ec2 = aws.ec2()
    lt = ec2.create_launch_template(LaunchTemplateName="tpl", LaunchTemplateData={"ImageId": "ami-12345678"})["LaunchTemplate"]["LaunchTemplateId"]
    for i in range(3):
        ec2.create_launch_template_version(LaunchTemplateId=lt, LaunchTemplateData={"ImageId": f"ami-1234567{i}"})
    answer = ec2.delete_launch_template_versions(LaunchTemplateId=lt, Versions=["1", "2", "9"])
    assert [v["VersionNumber"] for v in answer["SuccessfullyDeletedLaunchTemplateVersions"]] == [2]
    kept = {v["VersionNumber"]: v["ResponseError"]["Code"] for v in answer["UnsuccessfullyDeletedLaunchTemplateVersions"]}
    assert kept == {1: "unexpectedError", 9: "launchTemplateVersionDoesNotExist"}
    numbers = [v["VersionNumber"] for page in ec2.get_paginator("describe_launch_template_versions").paginate(LaunchTemplateId=lt) for v in page["LaunchTemplateVersions"]]
    assert sorted(numbers) == [1, 3, 4]
    made = ec2.create_launch_template_version(LaunchTemplateId=lt, LaunchTemplateData={"ImageId": "ami-22345678"})
    assert made["LaunchTemplateVersion"]["VersionNumber"] == 5  # numbers keep counting


def test_launch_template_tags_are_what_create_and_delete_tags_left(aws):
    ec2 = aws.ec2()
    made = ec2.create_launch_template(
        LaunchTemplateName="tpl", LaunchTemplateData={"ImageId": "ami-12345678"},
        TagSpecifications=[{"ResourceType": "launch-template", "Tags": [{"Key": "a", "Value": "1"}]}],
    )["LaunchTemplate"]["LaunchTemplateId"]
    ec2.create_tags(Resources=[made], Tags=[{"Key": "b", "Value": "2"}])
    ec2.delete_tags(Resources=[made], Tags=[{"Key": "a"}])
    tags = ec2.describe_launch_templates(LaunchTemplateIds=[made])["LaunchTemplates"][0]["Tags"]
    assert tags == [{"Key": "b", "Value": "2"}]


def test_create_volume_with_a_client_token_it_has_seen_answers_the_same_volume(aws):
    """A retry whose first answer was lost must not make a second volume (the grow agent's
    CreateVolume carries a token for exactly this); other parameters are refused."""
    ec2 = aws.ec2()
    tags = [{"ResourceType": "volume", "Tags": [{"Key": "factory:grow", "Value": "true"}]}]
    ask = {"AvailabilityZone": "us-east-1a", "Size": 10, "VolumeType": "gp3", "Encrypted": True, "TagSpecifications": tags}
    first = ec2.create_volume(ClientToken="grow-i-1-1-10", **ask)["VolumeId"]
    again = ec2.create_volume(ClientToken="grow-i-1-1-10", **ask)["VolumeId"]
    assert again == first
    with pytest.raises(ClientError) as exc:
        ec2.create_volume(ClientToken="grow-i-1-1-10", **(ask | {"Size": 20}))
    assert code(exc.value) == "IdempotentParameterMismatch"
    other = ec2.create_volume(ClientToken="grow-i-1-2-10", **ask)["VolumeId"]
    untokened = [ec2.create_volume(**ask)["VolumeId"] for _ in range(2)]
    assert len({first, other, *untokened}) == 4
    made = [v["VolumeId"] for p in ec2.get_paginator("describe_volumes").paginate(
        Filters=[{"Name": "tag:factory:grow", "Values": ["true"]}]) for v in p["Volumes"]]
    assert sorted(made) == sorted({first, other, *untokened})
    # Deleted, the token still answers the original volume (AWS: "the result of the original
    # request is returned"), as it stands now; never a new volume.
    ec2.delete_volume(VolumeId=first)
    after = ec2.create_volume(ClientToken="grow-i-1-1-10", **ask)
    assert (after["VolumeId"], after["State"]) == (first, "deleted")
    still = [v["VolumeId"] for p in ec2.get_paginator("describe_volumes").paginate(
        Filters=[{"Name": "tag:factory:grow", "Values": ["true"]}]) for v in p["Volumes"]]
    assert sorted(still) == sorted({other, *untokened})


def test_batch_calls_on_an_arn_are_known_to_faults_and_the_call_log(aws, server):
    batch = aws.batch()
    make_ce(aws)
    wait_status(aws, "env", "VALID")
    arn = batch.describe_compute_environments(computeEnvironments=["env"])["computeEnvironments"][0]["computeEnvironmentArn"]
    faults.arm(server.endpoint, faults.Fault("batch:TagResource", "error"))
    server.calls(clear=True)
    with pytest.raises(ClientError) as exc:
        batch.tag_resource(resourceArn=arn, tags={"k": "v"})
    assert code(exc.value) == "InjectedFault"
    batch.tag_resource(resourceArn=arn, tags={"k": "v"})
    batch.untag_resource(resourceArn=arn, tagKeys=["k"])
    assert server.calls() == ["batch:TagResource", "batch:TagResource", "batch:UntagResource"]


def test_deregister_with_its_snapshots_and_the_in_use_race_without(aws):
    ec2 = aws.ec2()
    base = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    instance = ec2.run_instances(ImageId=base, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    one = ec2.create_image(InstanceId=instance, Name="one")["ImageId"]
    two = ec2.create_image(InstanceId=instance, Name="two")["ImageId"]
    snap = ec2.describe_images(ImageIds=[two])["Images"][0]["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    answer = ec2.deregister_image(ImageId=one, DeleteAssociatedSnapshots=True)
    assert [r["ReturnCode"] for r in answer["DeleteSnapshotResults"]] == ["success"]
    ec2.deregister_image(ImageId=two)
    with pytest.raises(ClientError) as exc:
        ec2.delete_snapshot(SnapshotId=snap)
    assert code(exc.value) == "InvalidSnapshot.InUse"


def test_a_security_group_an_instance_is_in_is_kept_until_the_instance_is_terminated(aws):
    """A stopped builder still holds its security group (Packer's cleanup meets this when
    its TerminateInstances failed); terminated, the group goes."""
    ec2 = aws.ec2()
    base = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    group = ec2.create_security_group(GroupName="packer_0e1f", Description="Temporary group for Packer")["GroupId"]
    spare = ec2.create_security_group(GroupName="unused", Description="no instance in it")["GroupId"]
    instance = ec2.run_instances(ImageId=base, MinCount=1, MaxCount=1, SecurityGroupIds=[group])["Instances"][0]["InstanceId"]
    for stage in ("running", "stopped"):
        with pytest.raises(ClientError) as exc:
            ec2.delete_security_group(GroupId=group)
        assert code(exc.value) == "DependencyViolation", stage
        assert group in exc.value.response["Error"]["Message"]
        ec2.stop_instances(InstanceIds=[instance])
    with pytest.raises(ClientError) as exc:
        ec2.delete_security_group(GroupName="packer_0e1f")  # by name, as in EC2-Classic days
    assert code(exc.value) == "DependencyViolation"
    ec2.delete_security_group(GroupId=spare)  # a group no instance is in goes at once
    ec2.terminate_instances(InstanceIds=[instance])
    ec2.delete_security_group(GroupId=group)
    left = {g["GroupId"] for g in ec2.describe_security_groups()["SecurityGroups"]}
    assert group not in left and spare not in left


# -- Pages -----------------------------------------------------------------------------


def test_batch_pages_whether_asked_or_not_and_tokens_belong_to_their_request(aws):
    for n in range(3):
        if n == 0:
            make_ce(aws, name="ce0")
        else:
            cr = aws.batch().describe_compute_environments(computeEnvironments=["ce0"])["computeEnvironments"][0]["computeResources"]
            aws.batch().create_compute_environment(computeEnvironmentName=f"ce{n}", type="MANAGED", state="ENABLED", computeResources=cr)
    first = aws.batch().describe_compute_environments()
    assert len(first["computeEnvironments"]) == 2 and first["nextToken"]
    pages = aws.batch().get_paginator("describe_compute_environments").paginate()
    assert sorted(c["computeEnvironmentName"] for p in pages for c in p["computeEnvironments"]) == ["ce0", "ce1", "ce2"]
    with pytest.raises(ClientError, match="another request"):
        aws.batch().describe_compute_environments(computeEnvironments=["ce0", "ce1", "ce2"], nextToken=first["nextToken"])


def test_ec2_pages_with_max_results_and_answers_whole_without(aws):
    ec2 = aws.ec2()
    for i in range(20):  # moto alone cuts this list at 15, without a token
        ec2.create_launch_template(LaunchTemplateName=f"lt{i}", LaunchTemplateData={"ImageId": "ami-12345678"})
    assert len(ec2.describe_launch_templates()["LaunchTemplates"]) == 20
    page = ec2.describe_launch_templates(MaxResults=200)
    assert len(page["LaunchTemplates"]) == 2 and page["NextToken"]
    pages = ec2.get_paginator("describe_launch_templates").paginate(PaginationConfig={"PageSize": 200})
    assert len([t for p in pages for t in p["LaunchTemplates"]]) == 20


def test_an_item_deleted_between_two_pages_makes_no_reader_skip_another(aws):
    """A token remembers what was answered, not how many: deleting what page 1 held (as a
    team deleting its queues while register pages through the account) hides nothing else."""
    ec2 = aws.ec2()
    ids = [ec2.create_launch_template(LaunchTemplateName=f"lt{i}", LaunchTemplateData={"ImageId": "ami-12345678"})["LaunchTemplate"]["LaunchTemplateId"]
           for i in range(6)]
    first = ec2.describe_launch_templates(MaxResults=2)
    answered = [t["LaunchTemplateId"] for t in first["LaunchTemplates"]]
    assert answered == ids[:2]
    for gone in answered:
        ec2.delete_launch_template(LaunchTemplateId=gone)
    rest, token = [], first["NextToken"]
    while token:
        page = ec2.describe_launch_templates(MaxResults=2, NextToken=token)
        rest += [t["LaunchTemplateId"] for t in page["LaunchTemplates"]]
        token = page.get("NextToken")
    assert rest == ids[2:]  # with an offset, lt2 and lt3 would have been skipped


def test_describe_instances_refuses_max_results_beside_instance_ids(aws):
    ec2 = aws.ec2()
    base = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    ids = [i["InstanceId"] for i in ec2.run_instances(ImageId=base, MinCount=3, MaxCount=3)["Instances"]]
    with pytest.raises(ClientError) as exc:
        ec2.describe_instances(InstanceIds=ids, MaxResults=5)
    assert code(exc.value) == "InvalidParameterCombination"
    assert len(ec2.describe_instances(InstanceIds=ids)["Reservations"][0]["Instances"]) == 3  # without paging: all
    pages = ec2.get_paginator("describe_instances").paginate(Filters=[{"Name": "instance-id", "Values": ids}], PaginationConfig={"PageSize": 5})
    assert sorted(i["InstanceId"] for p in pages for r in p["Reservations"] for i in r["Instances"]) == sorted(ids)


# -- Faults ----------------------------------------------------------------------------


def test_error_fault_fails_the_next_call_only_and_is_not_retried(aws, server):
    faults.arm(server.endpoint, faults.Fault("ec2:DescribeVpcs", "error"))
    server.calls(clear=True)
    with pytest.raises(ClientError) as exc:
        aws.ec2().describe_vpcs()
    assert code(exc.value) == "InjectedFault"
    assert server.calls() == ["ec2:DescribeVpcs"]  # not retried
    aws.ec2().describe_vpcs()


@pytest.mark.parametrize("operation", ["ec2:DescribeVpcs", "batch:DescribeJobQueues", "iam:ListRoles", "ssm:DescribeParameters"])
@pytest.mark.parametrize("kind", ["throttle", "drop"])
def test_throttling_and_dropped_connections_are_retried(aws, server, operation, kind):
    service, op = operation.split(":")
    call = {"DescribeVpcs": "describe_vpcs", "DescribeJobQueues": "describe_job_queues", "ListRoles": "list_roles", "DescribeParameters": "describe_parameters"}[op]
    faults.arm(server.endpoint, faults.Fault(operation, kind, times=2))
    server.calls(clear=True)
    getattr(aws.client(service), call)()
    assert server.calls() == [operation] * 3
    assert faults.armed(server.endpoint) == []


def test_a_fault_for_one_caller_spares_the_others(aws, server):
    """`--caller command:bake`: Packer's call of the same operation is not failed, the
    command's is; the call listing names who made each."""
    from factory import aws as aws_mod

    faults.arm(server.endpoint, faults.Fault("ec2:DescribeVpcs", "error", caller="command:bake"))
    server.calls(clear=True)
    aws.ec2().describe_vpcs()  # boto3 as anyone else ("other"): spared
    previous = aws_mod.set_command("bake")
    try:
        with pytest.raises(ClientError) as exc:
            Clients(REGION, server.endpoint).ec2().describe_vpcs()
    finally:
        aws_mod.set_command(previous)
    assert code(exc.value) == "InjectedFault"
    assert server.calls_by() == [("other", "ec2:DescribeVpcs"), ("command:bake", "ec2:DescribeVpcs")]
    assert faults.armed(server.endpoint) == []


def test_a_moto_reset_forgets_the_batch_transitions_of_its_region():
    """moto's reset drops every resource; the transitions the Batch rules keep by ARN go with
    them (rules.batch installs this on BatchBackend.reset), so no DELETING clean-up or
    UPDATING outlives the reset."""
    from factory.local.aws.rules import Settings
    from factory.local.aws.rules.batch import _Lifecycle

    life = _Lifecycle(Settings())
    here = "arn:aws:batch:us-east-1:123456789012:compute-environment/factory-a"
    queue = "arn:aws:batch:us-east-1:123456789012:job-queue/factory-a"
    there = "arn:aws:batch:eu-west-1:123456789012:compute-environment/factory-a"
    for arn in (here, queue, there):
        life.start(arn, "UPDATING", 600)
    life.forget("us-east-1", "123456789012")
    assert (life.status(here), life.status(queue), life.status(there)) == ("VALID", "VALID", "UPDATING")
