"""factory.register against moto's server over real HTTP (no mocks, no patching).

Every AWS call goes through boto3 to `moto_server` on a loopback port. Calls are counted
with botocore's `before-call` event on the very clients register uses, so "a second run
makes zero mutating calls" is measured, not assumed.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import time
from pathlib import Path

import pytest

from factory.aws import Clients
from factory.config import BatchConfig, ConfigError, FactoryConfig, load_config
from factory.errors import FactoryError, UsageError
from factory.register import (
    TAG_MANAGED,
    launch_template_data,
    mime_user_data,
    register_tasks,
    targets_for,
)
from factory.spec import load_specs
from factory.tiers import Tier
from tests.conftest import SPECS

REGION = "us-east-1"
READ_PREFIXES = ("Describe", "List", "Get")


# ---------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture
def cloud(moto, monkeypatch):
    """A clean moto with what real AWS accounts have: an instance profile and Batch's service-linked role."""
    return open_account(moto, monkeypatch)


def open_account(moto, monkeypatch) -> Cloud:
    """`moto` (a MotoServer) reset to what real AWS accounts have (the `cloud` fixture)."""
    moto.reset()
    for var in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    clients = Clients(REGION, moto.endpoint)
    iam = clients.client("iam")
    slr = iam.create_service_linked_role(AWSServiceName="batch.amazonaws.com")["Role"]["Arn"]
    iam.create_role(RoleName="ecsInstanceRole", AssumeRolePolicyDocument="{}")
    iam.create_instance_profile(InstanceProfileName="ecsInstanceRole")
    iam.add_role_to_instance_profile(InstanceProfileName="ecsInstanceRole", RoleName="ecsInstanceRole")
    iam.create_role(RoleName="BatchServiceRole", AssumeRolePolicyDocument="{}")
    return Cloud(clients, slr, moto.endpoint)


@dataclasses.dataclass
class Cloud:
    clients: Clients
    slr: str  # Batch's service-linked role (moto needs a service role named explicitly)
    endpoint: str

    @property
    def ec2(self):
        return self.clients.ec2()

    @property
    def batch(self):
        return self.clients.batch()

    def config(self, **batch) -> FactoryConfig:
        return FactoryConfig(batch=BatchConfig(**batch))

    def bake(self, task: str, spec_hash: str = "") -> str:
        """An AMI as `factory bake` leaves it: made from an instance, tagged factory:task."""
        base = self.ec2.describe_images(
            Owners=["amazon"], Filters=[{"Name": "name", "Values": ["amzn2-ami-ecs-hvm-*x86_64-ebs"]}]
        )["Images"][0]["ImageId"]
        instance = self.ec2.run_instances(ImageId=base, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
        ami = self.ec2.create_image(InstanceId=instance, Name=f"factory-{task}-{time.time_ns()}")["ImageId"]
        self.ec2.create_tags(
            Resources=[ami],
            Tags=[
                {"Key": "factory:task", "Value": task},
                {"Key": "factory:spec-hash", "Value": spec_hash},
                {"Key": "factory:image-hash", "Value": "test"},
            ],
        )
        self.ec2.terminate_instances(InstanceIds=[instance])
        return ami

    def lt_version(self, name: str, version: str = "$Default") -> dict:
        return self.ec2.describe_launch_template_versions(LaunchTemplateName=name, Versions=[version])["LaunchTemplateVersions"][0]

    def ces(self) -> dict[str, dict]:
        pages = self.batch.get_paginator("describe_compute_environments").paginate()
        return {c["computeEnvironmentName"]: c for page in pages for c in page["computeEnvironments"]}

    def queues(self) -> dict[str, dict]:
        pages = self.batch.get_paginator("describe_job_queues").paginate()
        return {q["jobQueueName"]: q for page in pages for q in page["jobQueues"]}


class Calls:
    """Every AWS operation the given clients make, via botocore's before-call event."""

    def __init__(self, clients: Clients, services=("ec2", "batch", "iam")):
        self.ops: list[str] = []
        self.params: list[tuple[str, dict]] = []
        self._clients = [clients.client(s) for s in services]
        for c in self._clients:
            c.meta.events.register("before-call", self._call)
            c.meta.events.register("before-parameter-build", self._params)

    def _call(self, model, **_):
        self.ops.append(model.name)

    def _params(self, model, params, **_):
        self.params.append((model.name, json.loads(json.dumps(params, default=str))))

    @property
    def mutating(self) -> list[str]:
        return [op for op in self.ops if not op.startswith(READ_PREFIXES)]

    def of(self, op: str) -> list[dict]:
        return [p for name, p in self.params if name == op]

    def close(self):
        for c in self._clients:
            c.meta.events.unregister("before-call", self._call)
            c.meta.events.unregister("before-parameter-build", self._params)

    def __enter__(self) -> Calls:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@pytest.fixture(scope="module")
def specs():
    """The shipped specs on EBS without a GPU: the tier counts and caps below are theirs
    (the GPU spec's tier is registered in tests/test_gpu.py, star-align-nvme's in
    tests/test_local_run.py; each is a tier group of its own)."""
    return [s for s in load_specs([SPECS]) if s.image.accelerator == "none" and not s.storage.on_instance_store]


def bake_all(cloud: Cloud, specs) -> dict[str, str]:
    return {s.name: cloud.bake(s.name, s.spec_hash) for s in specs}


def run(cloud: Cloud, specs, config=None, **kw):
    return register_tasks(specs, cloud.clients, config=config or cloud.config(), all_specs=specs, poll=0.25, **kw)


def with_batch(spec, **changes):
    return dataclasses.replace(spec, batch=dataclasses.replace(spec.batch, **changes))


# ---------------------------------------------------------------------------------------
# What a first run creates


def test_all_specs_make_one_launch_template_environment_and_queue_per_tier(cloud, specs):
    amis = bake_all(cloud, specs)
    result = run(cloud, specs)

    from factory.sizing import size_specs
    from factory.tiers import choose_tiers

    tiers = choose_tiers(size_specs(specs))
    assert sorted(t.tier for t in result.tiers) == sorted(t.name for t in tiers)
    assert len(result.tiers) == 3
    by_spec = {s.name: s for s in specs}
    for tier in tiers:
        name = f"factory-{tier.name}"
        data = cloud.lt_version(name)["LaunchTemplateData"]
        assert data["ImageId"] == amis[tier.largest_task]
        (bdm,) = data["BlockDeviceMappings"]
        assert bdm["DeviceName"] == "/dev/xvda"
        assert bdm["Ebs"] == {"VolumeSize": tier.volume_gib, "VolumeType": "gp3", "Encrypted": True, "DeleteOnTermination": True}
        assert data["MetadataOptions"]["HttpTokens"] == "required"
        assert data["MetadataOptions"]["HttpEndpoint"] == "enabled"
        assert "UserData" not in data  # nothing to run at boot
        lt = cloud.ec2.describe_launch_templates(LaunchTemplateNames=[name])["LaunchTemplates"][0]
        tags = {t["Key"]: t["Value"] for t in lt["Tags"]}
        assert tags == {"factory:tier": tier.name, "factory:tasks": ",".join(tier.tasks), TAG_MANAGED: "true"}

        ce = cloud.ces()[name]
        cr = ce["computeResources"]
        spec = by_spec[tier.largest_task]
        assert ce["type"] == "MANAGED" and ce["state"] == "ENABLED" and ce["status"] == "VALID"
        assert cr["launchTemplate"] == {"launchTemplateName": name, "version": "1"}  # pinned, not $Latest
        assert cr["type"] == ("SPOT" if spec.batch.provisioning == "spot" else "EC2")
        assert cr["allocationStrategy"] == spec.batch.allocation_strategy
        assert cr["instanceTypes"] == list(spec.batch.instance_types)
        assert (cr["minvCpus"], cr["maxvCpus"]) == (spec.batch.min_vcpus, spec.batch.max_vcpus)
        assert cr.get("bidPercentage") == spec.batch.spot_bid_percentage
        assert cr["instanceRole"].endswith(":instance-profile/ecsInstanceRole")
        assert ce["tags"][TAG_MANAGED] == "true"

        queue = cloud.queues()[name]
        assert queue["state"] == "ENABLED"
        assert [o["computeEnvironment"] for o in queue["computeEnvironmentOrder"]] == [ce["computeEnvironmentArn"]]
        assert queue["tags"]["factory:tier"] == tier.name

        tr = result.for_task(tier.largest_task)
        assert tr.task_json() == {
            "tier": tier.name,
            "ami_id": amis[tier.largest_task],
            "launch_template": {"name": name, "version": 1},
            "compute_environment": name,
            "job_queue": name,
        }
    # The default VPC was used, and the result says so.
    vpc = cloud.ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    assert result.tiers[0].network.source.startswith(f"default VPC {vpc}")
    assert set(cloud.ces()[result.tiers[0].compute_environment]["computeResources"]["subnets"]) == set(result.tiers[0].network.subnets)


def test_registering_one_task_uses_the_same_tiers_as_all(cloud, specs):
    bake_all(cloud, specs)
    result = run(cloud, [s for s in specs if s.name == "salmon-quant"])
    assert [t.tasks for t in result.tiers] == [("salmon-quant",)]
    assert set(cloud.queues()) == {f"factory-{result.tiers[0].tier}"}


def test_tier_uses_the_largest_tasks_ami(cloud, specs):
    # Two tasks in one tier (what `--max-tiers 2` gives): the AMI is the largest task's.
    amis = bake_all(cloud, specs)
    result = run(cloud, specs, config=dataclasses.replace(cloud.config(), max_tiers=2))
    shared = [t for t in result.tiers if len(t.tasks) == 2]
    assert len(shared) == 1 and set(shared[0].tasks) == {"salmon-index", "star-align"}
    assert cloud.lt_version(f"factory-{shared[0].tier}")["LaunchTemplateData"]["ImageId"] == amis["star-align"]
    assert result.for_task("salmon-index").ami_id == amis["star-align"]


# ---------------------------------------------------------------------------------------
# Idempotence


def test_second_run_makes_no_mutating_call_and_says_unchanged(cloud, specs):
    bake_all(cloud, specs)
    first = run(cloud, specs)
    assert first.changed
    with Calls(cloud.clients) as calls:
        second = run(cloud, specs)
    assert calls.ops, "the hook saw no call at all: the count would prove nothing"
    assert calls.mutating == []
    assert not second.changed
    assert second.to_json()["status"] == "unchanged"
    assert {c.action for t in second.tiers for c in t.changes} == {"unchanged"}
    assert second.to_json()["tasks"] == first.to_json()["tasks"]


def test_plan_mutates_nothing_and_lists_what_register_would_create(cloud, specs):
    bake_all(cloud, specs)
    with Calls(cloud.clients) as calls:
        plan = run(cloud, specs, dry_run=True)
    assert calls.mutating == []
    actions = [(c.resource, c.action) for t in plan.tiers for c in t.changes]
    assert actions == [("launch-template", "create"), ("compute-environment", "create"), ("job-queue", "create"), ("ssm-parameter", "create")] * 3
    assert cloud.ces() == {} and cloud.queues() == {}


# ---------------------------------------------------------------------------------------
# Changes


def test_new_ami_makes_a_new_launch_template_version_and_updates_the_environment(cloud, specs):
    bake_all(cloud, specs)
    first = run(cloud, specs)
    star = first.for_task("star-align")
    name = f"factory-{star.tier}"
    time.sleep(1.1)  # AMI creation dates have one-second resolution
    new_ami = cloud.bake("star-align", next(s.spec_hash for s in specs if s.name == "star-align"))

    plan = run(cloud, specs, dry_run=True)
    star_plan = {c.resource: c for c in plan.for_task("star-align").changes}
    assert star_plan["launch-template"].action == "update" and new_ami in star_plan["launch-template"].reason
    assert star_plan["compute-environment"].action == "update"
    assert "version 1 -> 2" in star_plan["compute-environment"].reason

    with Calls(cloud.clients) as calls:
        second = run(cloud, specs)
    assert sorted(calls.mutating) == ["CreateLaunchTemplateVersion", "ModifyLaunchTemplate", "UpdateComputeEnvironment"]
    default = cloud.lt_version(name)
    assert default["VersionNumber"] == 2 and default["DefaultVersion"] is True
    assert default["LaunchTemplateData"]["ImageId"] == new_ami
    (update,) = calls.of("UpdateComputeEnvironment")
    assert update["computeEnvironment"] == name
    assert update["computeResources"]["launchTemplate"] == {"launchTemplateName": name, "version": "2"}
    assert update["computeResources"]["updateToLatestImageVersion"] is True
    assert second.for_task("star-align").task_json()["launch_template"] == {"name": name, "version": 2}
    # In place: the same environment, still behind the same queue; nothing else touched.
    assert set(cloud.ces()) == {f"factory-{t.tier}" for t in first.tiers}
    others = [t for t in second.tiers if t.tier != star.tier]
    assert all(not t.changed for t in others)


def test_ami_given_explicitly_wins_over_the_tag_lookup(cloud, specs):
    bake_all(cloud, specs)
    run(cloud, specs)
    given = cloud.bake("other-name")
    result = run(cloud, specs, ami_overrides={"salmon-quant": given})
    tr = result.for_task("salmon-quant")
    assert tr.ami_id == given and tr.launch_template["version"] == 2
    assert cloud.lt_version(f"factory-{tr.tier}")["LaunchTemplateData"]["ImageId"] == given


def test_best_fit_environment_is_replaced_not_updated(cloud, specs):
    # BEST_FIT allows no infrastructure update: a new AMI means a new compute environment,
    # the queue moved to it, the old one disabled and deleted.
    specs = [with_batch(s, allocation_strategy="BEST_FIT") if s.name == "star-align" else s for s in specs]
    bake_all(cloud, specs)
    first = run(cloud, specs)
    name = f"factory-{first.for_task('star-align').tier}"
    new_ami = cloud.bake("star-align")
    with Calls(cloud.clients) as calls:
        second = run(cloud, specs, ami_overrides={"star-align": new_ami})
    tr = second.for_task("star-align")
    assert tr.compute_environment.startswith(name + "-") and tr.compute_environment != name
    ces = cloud.ces()
    assert ces.get(name, {}).get("status") in ("DELETING", None) and tr.compute_environment in ces  # deleting, or gone once Batch is done
    assert ces[tr.compute_environment]["computeResources"]["launchTemplate"]["version"] == "2"
    assert [o["computeEnvironment"] for o in cloud.queues()[name]["computeEnvironmentOrder"]] == [ces[tr.compute_environment]["computeEnvironmentArn"]]
    assert "UpdateComputeEnvironment" in calls.mutating  # the old one was disabled first
    assert calls.mutating.index("UpdateJobQueue") < calls.mutating.index("DeleteComputeEnvironment")
    assert [c.action for c in tr.changes if c.resource == "compute-environment"] == ["replace", "delete"]
    # ... and the replacement is stable: a third run changes nothing.
    with Calls(cloud.clients) as calls:
        third = run(cloud, specs, ami_overrides={"star-align": new_ami})
    assert calls.mutating == [] and not third.changed


def test_scaling_change_is_an_in_place_update(cloud, specs):
    bake_all(cloud, specs)
    run(cloud, specs)
    bigger = [with_batch(s, max_vcpus=512) if s.name == "salmon-quant" else s for s in specs]
    with Calls(cloud.clients) as calls:
        result = run(cloud, bigger)
    assert calls.mutating == ["UpdateComputeEnvironment"]
    (update,) = calls.of("UpdateComputeEnvironment")
    assert update["computeResources"] == {"maxvCpus": 512}
    change = next(c for c in result.for_task("salmon-quant").changes if c.resource == "compute-environment")
    assert change.action == "update" and change.reason.startswith("scaling update")


def test_regular_service_role_means_replacement_for_infrastructure_changes(cloud, specs):
    role = cloud.clients.client("iam").get_role(RoleName="BatchServiceRole")["Role"]["Arn"]
    config = cloud.config(service_role=role)
    bake_all(cloud, specs)
    run(cloud, specs, config=config)
    result = run(cloud, specs, config=config, ami_overrides={"salmon-quant": cloud.bake("salmon-quant")})
    change = next(c for c in result.for_task("salmon-quant").changes if c.resource == "compute-environment")
    assert change.action == "replace" and "service-linked role" in change.reason


# ---------------------------------------------------------------------------------------
# A run that fails half way is finished by the next one


def test_failure_before_the_queue_is_repaired_not_duplicated(cloud, specs):
    bake_all(cloud, specs)
    batch = cloud.batch

    def boom(**_):
        raise RuntimeError("injected failure before CreateJobQueue")

    batch.meta.events.register("before-call.batch.CreateJobQueue", boom)
    try:
        with pytest.raises(RuntimeError, match="injected"):
            run(cloud, specs)
    finally:
        batch.meta.events.unregister("before-call.batch.CreateJobQueue", boom)
    # Environments are made for every tier before any queue: all three got theirs.
    assert len(cloud.ces()) == 3 and cloud.queues() == {}

    with Calls(cloud.clients) as calls:
        result = run(cloud, specs)
    assert calls.mutating.count("CreateLaunchTemplate") == 0
    assert calls.mutating.count("CreateComputeEnvironment") == 0
    assert calls.mutating.count("CreateJobQueue") == 3
    assert len(cloud.ces()) == 3 and len(cloud.queues()) == 3
    for t in result.tiers:
        versions = cloud.ec2.describe_launch_template_versions(LaunchTemplateName=f"factory-{t.tier}")["LaunchTemplateVersions"]
        assert len(versions) == 1
    with Calls(cloud.clients) as calls:
        run(cloud, specs)
    assert calls.mutating == []


def test_failure_between_new_version_and_default_is_repaired_without_a_third_version(cloud, specs):
    bake_all(cloud, specs)
    first = run(cloud, specs)
    name = f"factory-{first.for_task('salmon-quant').tier}"
    new_ami = cloud.bake("salmon-quant")
    ec2 = cloud.ec2

    def boom(**_):
        raise RuntimeError("injected failure before ModifyLaunchTemplate")

    ec2.meta.events.register("before-call.ec2.ModifyLaunchTemplate", boom)
    try:
        with pytest.raises(RuntimeError):
            run(cloud, specs, ami_overrides={"salmon-quant": new_ami})
    finally:
        ec2.meta.events.unregister("before-call.ec2.ModifyLaunchTemplate", boom)
    assert cloud.lt_version(name)["VersionNumber"] == 1  # version 2 exists, but is not the default

    with Calls(cloud.clients) as calls:
        result = run(cloud, specs, ami_overrides={"salmon-quant": new_ami})
    assert "CreateLaunchTemplateVersion" not in calls.mutating
    assert cloud.lt_version(name)["VersionNumber"] == 2
    assert len(ec2.describe_launch_template_versions(LaunchTemplateName=name)["LaunchTemplateVersions"]) == 2
    assert result.for_task("salmon-quant").launch_template["version"] == 2


# ---------------------------------------------------------------------------------------
# Config, network, roles and clear errors


def test_subnets_and_security_groups_from_the_config_file(cloud, specs, tmp_path):
    vpc = cloud.ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    subnet = cloud.ec2.create_subnet(VpcId=vpc, CidrBlock="10.9.1.0/24")["Subnet"]["SubnetId"]
    group = cloud.ec2.create_security_group(GroupName="batch", Description="batch", VpcId=vpc)["GroupId"]
    path = tmp_path / "factory.yaml"
    path.write_text(
        f"batch:\n  subnets: [{subnet}]\n  security_groups: [{group}]\n  service_role: {cloud.slr}\n"
        "launch_template:\n  boot_commands:\n    - echo ECS_ENABLE_SPOT_INSTANCE_DRAINING=true >> /etc/ecs/ecs.config\n"
    )
    config = load_config(None, search_dir=tmp_path)  # found as ./factory.yaml
    assert config.path == path.resolve()
    bake_all(cloud, specs)
    result = run(cloud, specs, config=config)
    assert result.tiers[0].network.source == f"config {path.resolve()}"
    cr = cloud.ces()[result.tiers[0].compute_environment]["computeResources"]
    assert cr["subnets"] == [subnet] and cr["securityGroupIds"] == [group]
    user_data = base64.b64decode(cloud.lt_version(f"factory-{result.tiers[0].tier}")["LaunchTemplateData"]["UserData"]).decode()
    assert user_data.startswith('Content-Type: multipart/mixed; boundary="')
    assert "Content-Type: text/x-shellscript" in user_data
    assert "ECS_ENABLE_SPOT_INSTANCE_DRAINING=true" in user_data


def test_missing_default_vpc_is_a_clear_error(cloud, specs):
    bake_all(cloud, specs)
    ec2 = cloud.ec2
    vpc = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    for s in ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc]}])["Subnets"]:
        ec2.delete_subnet(SubnetId=s["SubnetId"])
    ec2.delete_vpc(VpcId=vpc)
    with pytest.raises(FactoryError) as exc:
        run(cloud, specs)
    assert "no default VPC" in exc.value.message
    assert "batch.subnets" in exc.value.message and "factory.yaml" in exc.value.message
    assert cloud.ec2.describe_launch_templates()["LaunchTemplates"] == []  # refused before creating anything


def test_missing_ami_says_bake_first(cloud, specs):
    with pytest.raises(FactoryError, match=r"factory bake salmon-index"):
        run(cloud, specs)


def test_missing_instance_profile_names_the_setting(cloud, specs):
    bake_all(cloud, specs)
    with pytest.raises(FactoryError) as exc:
        run(cloud, specs, config=cloud.config(instance_role="noSuchProfile"))
    assert "noSuchProfile" in exc.value.message and "batch.instance_role" in exc.value.message


def test_unmanaged_launch_template_with_our_name_is_not_taken_over(cloud, specs):
    bake_all(cloud, specs)
    plan = run(cloud, specs, dry_run=True)
    name = f"factory-{plan.tiers[0].tier}"
    cloud.ec2.create_launch_template(LaunchTemplateName=name, LaunchTemplateData={"ImageId": "ami-12345678"})
    with pytest.raises(FactoryError, match="not managed by factory"):
        run(cloud, specs)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("batch:\n  subnets: [subnet-1]\n", "give both `subnets` and `security_groups`"),
        ("batch:\n  subnets: [vpc-1]\n  security_groups: [sg-1]\n", "'vpc-1' is not a subnet-... id"),
        ("batch:\n  subnet: [subnet-1]\n", "batch.subnet: unknown setting"),
        ("bacth: {}\n", "bacth: unknown section"),
        ("prune:\n  keep: 0\n", "prune.keep"),
        ("prune:\n  builder_hours: -1\n", "prune.builder_hours: expected a number of hours >= 0, got -1"),
        ("prune:\n  builder_hours: soon\n", "prune.builder_hours"),
        ("tiers:\n  max_tiers: many\n", "tiers.max_tiers"),
        ("batch: [1, 2]\n", "batch: must be a mapping"),
        ("batch:\n  subnets: [subnet-1\n", "not valid YAML (line"),
        # The spec reader's defences, for the config file too (each was a traceback or silent).
        ("batch: " + "[" * 5000 + "]" * 5000 + "\n", "nested deeper than 32 levels"),
        ("tiers:\n  max_tiers: 1" + "0" * 5000 + "\n", "a number of 5001 characters"),
        ("batch:\n  queue_priority: 1\n  queue_priority: 2\n", "duplicate key 'queue_priority'"),
        ("x: &a [1, 2]\nbatch: {subnets: *a}\n", "YAML aliases (*a) are not allowed"),
        ("\x00\x01binary", "not a text file"),
    ],
)
def test_bad_config_names_file_field_and_fix(tmp_path, text, expected):
    path = tmp_path / "factory.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert expected in exc.value.message
    assert str(path) in exc.value.message
    assert exc.value.exit_code == 1


def test_config_defaults_and_missing_file(tmp_path):
    (tmp_path / "empty.yaml").write_text("# nothing set\n")
    assert load_config(tmp_path / "empty.yaml").batch.instance_role == "ecsInstanceRole"  # an empty file is all defaults
    config = load_config(None, search_dir=tmp_path)
    assert config.path is None and config.batch.instance_role == "ecsInstanceRole" and config.batch.service_role is None
    assert (config.prune_keep, config.prune_builder_hours) == (3, 6.0)
    (tmp_path / "hours.yaml").write_text("prune:\n  builder_hours: 1.5\n")
    assert load_config(tmp_path / "hours.yaml").prune_builder_hours == 1.5
    with pytest.raises(UsageError, match="not found"):
        load_config(tmp_path / "nope.yaml")


# ---------------------------------------------------------------------------------------
# The launch template content, without AWS


def test_al1_keeps_the_root_and_sizes_the_docker_device(specs):
    spec = next(s for s in specs if s.name == "star-align")
    al1 = dataclasses.replace(spec, image=dataclasses.replace(spec.image, base="ecs-al1", family="al1"))
    (target,) = targets_for([al1], [Tier("77g", 77, (al1.name,), (), al1.name)])
    data = launch_template_data(target, "ami-1")
    assert [m["DeviceName"] for m in data["BlockDeviceMappings"]] == ["/dev/xvdcz"]
    assert data["BlockDeviceMappings"][0]["Ebs"]["VolumeSize"] == 77


def test_user_data_only_when_something_runs_at_boot(specs):
    (target,) = targets_for(specs[:1], [Tier("10g", 10, (specs[0].name,), (), specs[0].name)])
    assert "UserData" not in launch_template_data(target, "ami-1")
    text = base64.b64decode(launch_template_data(target, "ami-1", ["echo hi"])["UserData"]).decode()
    assert text == mime_user_data(["echo hi"])
    assert text.rstrip().endswith("--==FACTORY-BOUNDARY==--") and "#!/bin/bash" in text


def test_tier_mixing_groups_is_refused(specs):
    with pytest.raises(FactoryError, match="mixes tasks"):
        targets_for(specs, [Tier("x", 10, tuple(s.name for s in specs), (), specs[0].name)])


# ---------------------------------------------------------------------------------------
# The CLI, pointed at moto by AWS_ENDPOINT_URL as a user would


def write_config(cloud: Cloud, tmp_path: Path) -> Path:
    path = tmp_path / "factory.yaml"
    path.write_text(f"batch:\n  service_role: {cloud.slr}\n")
    return path


def test_cli_plan_register_json_and_rerun(cloud, specs, cli, tmp_path):
    amis = bake_all(cloud, load_specs([SPECS]))  # the CLI registers every spec of the folder, the GPU one too
    env = {"AWS_ENDPOINT_URL": cloud.endpoint, "COLUMNS": "200"}
    config = write_config(cloud, tmp_path)
    common = ["--specs-dir", SPECS, "--config", config]

    r = cli("plan", "--all", *common, env=env)
    assert r.exit_code == 0, r.stderr
    assert "create" in r.stdout and "dry run: nothing was changed" in r.stdout
    assert "default VPC" in r.stdout
    assert cloud.queues() == {}

    r = cli("register", "salmon-quant", *common, "--json", env=env)
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout)
    task = data["tasks"]["salmon-quant"]
    tier = task["tier"]
    assert task == {
        "tier": tier,
        "ami_id": amis["salmon-quant"],
        "launch_template": {"name": f"factory-{tier}", "version": 1},
        "compute_environment": f"factory-{tier}",
        "job_queue": f"factory-{tier}",
    }
    assert set(cloud.queues()) == {f"factory-{tier}"}

    r = cli("register", "salmon-quant", *common, env=env)
    assert r.exit_code == 0, r.stderr
    assert "unchanged: nothing to do" in r.stdout

    r = cli("nextflow-config", "--check", "--specs-dir", SPECS, env=env)
    assert r.exit_code == 1 and "not registered" in r.stderr  # the other tiers are not there yet
    assert cli("register", "--all", *common, env=env).exit_code == 0
    r = cli("nextflow-config", "--check", "--specs-dir", SPECS, env=env)
    assert r.exit_code == 0, r.stderr

    # The unchanged CLI run, seen from moto's side of the wire: only reads reach it.
    with Recording(cloud.endpoint) as seen:
        r = cli("register", "--all", *common, env=env)
    assert r.exit_code == 0, r.stderr
    assert "unchanged: nothing to do" in r.stdout
    assert "DescribeLaunchTemplates" in seen.ops and "describecomputeenvironments" in seen.ops
    assert "GetParameters" in seen.ops  # the task parameters are read, not written
    assert [op for op in seen.ops if not op.lower().startswith(("describe", "get", "list"))] == []


class Recording:
    """moto's request recorder: the operation of every HTTP request the server received."""

    def __init__(self, endpoint: str):
        self.endpoint = endpoint
        self.ops: list[str] = []

    def _post(self, action: str) -> None:
        import urllib.request

        urllib.request.urlopen(urllib.request.Request(f"{self.endpoint}/moto-api/recorder/{action}", method="POST")).close()

    def __enter__(self) -> Recording:
        self._post("reset-recording")
        self._post("start-recording")
        return self

    def __exit__(self, *exc) -> None:
        import urllib.parse
        import urllib.request

        self._post("stop-recording")
        with urllib.request.urlopen(f"{self.endpoint}/moto-api/recorder/download-recording") as resp:
            lines = resp.read().decode().splitlines()
        for line in filter(None, lines):
            req = json.loads(line)
            body = req.get("body") or ""
            if req.get("body_encoded"):
                body = base64.b64decode(body).decode(errors="replace")
            action = dict(urllib.parse.parse_qsl(body)).get("Action")  # EC2 / IAM query API
            target = {k.lower(): v for k, v in (req.get("headers") or {}).items()}.get("x-amz-target", "")  # SSM JSON API
            self.ops.append(action or target.rsplit(".", 1)[-1] or req["url"].rstrip("/").rsplit("/", 1)[-1])  # Batch REST path


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["register"], 2, "give a TASK or --all"),
        (["register", "salmon-quant", "--all"], 2, "give a TASK or --all, not both"),
        (["register", "--all", "--ami", "ami-1"], 2, "--ami goes with one TASK"),
        (["register", "salmon-quant", "--ami", "nope"], 2, "not an AMI id"),
        (["plan", "no-such-task"], 2, "no spec for task"),
        (["register", "--all", "--config", "/no/such/factory.yaml"], 2, "not found"),
    ],
)
def test_cli_usage_errors(cli, args, code, message):
    r = cli(*args, "--specs-dir", SPECS)
    assert r.exit_code == code
    assert message in r.stderr
    assert "Traceback" not in r.stderr


def test_cli_register_without_ami_is_a_clear_error(cloud, cli, tmp_path):
    r = cli("register", "--all", "--specs-dir", SPECS, "--config", write_config(cloud, tmp_path), env={"AWS_ENDPOINT_URL": cloud.endpoint})
    assert r.exit_code == 1
    assert "factory bake" in r.stderr and "Traceback" not in r.stderr


def test_cli_bad_config_is_exit_1_with_file_and_field(cli, tmp_path):
    path = tmp_path / "factory.yaml"
    path.write_text("batch:\n  subnets: subnet-1\n")
    r = cli("plan", "--all", "--specs-dir", SPECS, "--config", path)
    assert r.exit_code == 1
    assert f"{path.resolve()}: batch:" in r.stderr and "security_groups" in r.stderr


def test_prune_dry_run_lists_and_apply_deregisters_old_amis(cloud, specs, cli, tmp_path):
    bake_all(cloud, specs)
    run(cloud, specs)
    quant_tier = run(cloud, specs, dry_run=True).for_task("salmon-quant")
    in_use = quant_tier.ami_id
    # Two newer AMIs for salmon-quant that no launch template uses: with --keep 1 the
    # newest is kept, the middle one goes, the one the launch template uses stays.
    time.sleep(1.1)
    middle = cloud.bake("salmon-quant")
    time.sleep(1.1)
    newest = cloud.bake("salmon-quant")
    env = {"AWS_ENDPOINT_URL": cloud.endpoint}
    r = cli("prune", "--keep", "1", "--specs-dir", SPECS, env=env)
    assert r.exit_code == 0, r.stderr
    assert f"would delete ami {middle}" in r.stdout and "--apply" in r.stdout
    assert in_use not in r.stdout and newest not in r.stdout
    assert len(cloud.ec2.describe_images(ImageIds=[middle])["Images"]) == 1  # dry run: still there

    r = cli("prune", "--keep", "1", "--apply", "--specs-dir", SPECS, env=env)
    assert r.exit_code == 0, r.stderr
    assert f"deleted ami {middle}" in r.stdout
    left = {i["ImageId"] for i in cloud.ec2.describe_images(Owners=["self"], Filters=[{"Name": "tag:factory:task", "Values": ["salmon-quant"]}])["Images"]}
    assert left == {in_use, newest}


def test_prune_plans_unused_launch_template_versions(cloud, specs):
    # moto 5.2.5 answers DeleteLaunchTemplateVersions with a 500, so only the plan is checked here.
    from factory.register import prune

    bake_all(cloud, specs)
    run(cloud, specs)
    tier = run(cloud, specs, dry_run=True).for_task("salmon-quant")
    for _ in range(3):
        run(cloud, specs, ami_overrides={"salmon-quant": cloud.bake("salmon-quant")})
    name = f"factory-{tier.tier}"
    # Versions 1-4, default 4; keep the newest 2 and whatever the compute environment pins
    # (moto does not store update_compute_environment's new version, so it still says 1).
    pinned = int(cloud.ces()[name]["computeResources"]["launchTemplate"]["version"])
    doomed = sorted({1, 2} - {pinned})
    result = prune(cloud.clients, keep=2, dry_run=True)
    lt_changes = [c for c in result.changes if c.resource == "launch-template"]
    assert [(c.name, c.reason.split(" (")[0]) for c in lt_changes] == [(name, "versions " + ", ".join(map(str, doomed)))]


def test_a_tag_removed_by_hand_is_put_back_with_one_call(cloud, specs):
    bake_all(cloud, specs)
    first = run(cloud, specs)
    queue = first.tiers[0].job_queue
    batch = cloud.clients.batch()
    arn = batch.describe_job_queues(jobQueues=[queue])["jobQueues"][0]["jobQueueArn"]
    batch.untag_resource(resourceArn=arn, tagKeys=["factory:tier"])
    with Calls(cloud.clients) as calls:
        second = run(cloud, specs)
    assert calls.mutating == ["TagResource"]
    fixed = [c for t in second.tiers for c in t.changes if c.action != "unchanged"]
    assert [(c.resource, c.name) for c in fixed] == [("job-queue", queue)]
    assert fixed[0].reason.startswith("tags: factory:tier=")
    assert batch.describe_job_queues(jobQueues=[queue])["jobQueues"][0]["tags"]["factory:tier"] == first.tiers[0].tier


def test_error_code_and_message_read_a_real_botocore_error(cloud):
    """aws.error_code/error_message: the one way factory reads an AWS error."""
    from botocore.exceptions import ClientError

    from factory.aws import error_code, error_message

    with pytest.raises(ClientError) as exc:
        cloud.clients.ec2().describe_images(ImageIds=["ami-0000000000000dead"])
    assert error_code(exc.value).startswith("InvalidAMIID")
    assert error_message(exc.value)
    assert error_code(ValueError("not AWS")) == "" == error_message(ValueError("not AWS"))


# ---------------------------------------------------------------------------------------
# What a real account would do (issue 15): removals, update policy, limits, prune reports


def _ce_of(cloud, result, task):
    return cloud.ces()[result.for_task(task).compute_environment]


@pytest.mark.parametrize("first, second", [("spot", "on-demand"), ("on-demand", "spot")])
def test_switching_provisioning_both_ways_updates_in_place(cloud, specs, first, second):
    def shaped(how):
        if how == "spot":
            return [with_batch(s, provisioning="spot", allocation_strategy="SPOT_CAPACITY_OPTIMIZED", spot_bid_percentage=80) for s in specs]
        return [with_batch(s, provisioning="on-demand", allocation_strategy="BEST_FIT_PROGRESSIVE", spot_bid_percentage=None) for s in specs]

    bake_all(cloud, specs)
    run(cloud, shaped(first))
    result = run(cloud, shaped(second))
    cr = _ce_of(cloud, result, "salmon-quant")["computeResources"]
    assert cr["type"] == ("SPOT" if second == "spot" else "EC2")
    if second == "spot":  # on EC2 a bid means nothing: neither sent nor compared
        assert cr["bidPercentage"] == 80
    assert not run(cloud, shaped(second)).changed


def test_dropping_a_spot_bid_sets_aws_default_and_settles(cloud, specs):
    spot = [with_batch(s, provisioning="spot", allocation_strategy="SPOT_CAPACITY_OPTIMIZED", spot_bid_percentage=60) for s in specs]
    bake_all(cloud, specs)
    run(cloud, spot)
    no_bid = [with_batch(s, spot_bid_percentage=None) for s in spot]
    result = run(cloud, no_bid)
    assert _ce_of(cloud, result, "salmon-quant")["computeResources"]["bidPercentage"] == 100
    assert not run(cloud, no_bid).changed


@pytest.mark.parametrize("first, second", [("mine", None), (None, "mine")])
def test_adding_and_removing_the_key_pair(cloud, specs, first, second):
    bake_all(cloud, specs)
    run(cloud, specs, config=cloud.config(ec2_key_pair=first))
    result = run(cloud, specs, config=cloud.config(ec2_key_pair=second))
    assert _ce_of(cloud, result, "salmon-quant")["computeResources"].get("ec2KeyPair") == second
    assert not run(cloud, specs, config=cloud.config(ec2_key_pair=second)).changed


def test_an_ami_roll_sends_the_update_policy_and_the_environment_keeps_it(cloud, specs):
    bake_all(cloud, specs)
    run(cloud, specs)
    new_ami = cloud.bake("salmon-quant")
    with Calls(cloud.clients) as calls:
        result = run(cloud, specs, config=cloud.config(update_timeout_minutes=720), ami_overrides={"salmon-quant": new_ami})
    (update,) = [p for op, p in calls.params if op == "UpdateComputeEnvironment"]
    assert update["updatePolicy"] == {"terminateJobsOnUpdate": False, "jobExecutionTimeoutMinutes": 720}
    assert update["computeResources"]["updateToLatestImageVersion"] is True
    ce = _ce_of(cloud, result, "salmon-quant")
    assert ce["updatePolicy"] == {"terminateJobsOnUpdate": False, "jobExecutionTimeoutMinutes": 720}
    assert "720 min to finish" in next(c.reason for c in result.for_task("salmon-quant").changes if c.resource == "compute-environment")


def test_long_task_lists_stay_within_aws_limits_and_lose_nothing(cloud, specs):
    from factory.register import tasks_from_tags, tasks_tags, version_description

    names = [f"a-rather-long-task-name-for-a-genomics-step-number-{i:02d}" for i in range(7)]
    tags = tasks_tags(names)
    assert len(",".join(names)) > 256 and all(len(v) <= 256 for v in tags.values())
    assert tasks_from_tags(tags) == names
    assert len(version_description(names)) <= 255 and "more" in version_description(names)
    assert version_description(["a", "b"]) == "factory: a,b"

    # Through AWS: a tier with those seven tasks is created and tagged without an error.
    long_specs = [dataclasses.replace(specs[1], name=n) for n in names]
    for s in long_specs:
        cloud.bake(s.name, s.spec_hash)
    tier = Tier(names[-1], 100, tuple(names), (), names[-1])
    result = register_targets_for(cloud, long_specs, [tier])
    lt = cloud.ec2.describe_launch_templates(LaunchTemplateNames=[f"factory-{names[-1]}"])["LaunchTemplates"][0]
    assert tasks_from_tags({t["Key"]: t["Value"] for t in lt["Tags"]}) == sorted(names)
    assert tasks_from_tags(cloud.queues()[f"factory-{names[-1]}"]["tags"]) == sorted(names)
    assert result.tiers[0].changed


def register_targets_for(cloud, specs, tiers):
    from factory.register import register_targets

    return register_targets(targets_for(specs, tiers), cloud.clients, config=cloud.config(), poll=0.25)


def test_prune_reports_versions_aws_kept_instead_of_claiming_them(cloud, specs):
    from factory.register.prune import _prune_versions
    from factory.register.results import Change

    ec2 = cloud.ec2
    lt = ec2.create_launch_template(LaunchTemplateName="factory-raced", LaunchTemplateData={"ImageId": "ami-12345678"})["LaunchTemplate"]
    for i in range(3):
        ec2.create_launch_template_version(LaunchTemplateId=lt["LaunchTemplateId"], LaunchTemplateData={"ImageId": f"ami-1234567{i}"})
    # Someone made version 1 the default after prune read the template (it still says 4).
    stale = dict(lt, DefaultVersionNumber=4)
    ec2.modify_launch_template(LaunchTemplateId=lt["LaunchTemplateId"], DefaultVersion="1")
    changes: list[Change] = []
    _prune_versions(ec2, stale, {}, 1, False, changes)
    deleted = [c for c in changes if c.action == "delete"]
    failed = [c for c in changes if c.action == "failed"]
    assert deleted and "versions 2, 3" in deleted[0].reason and "1" not in deleted[0].reason.split("(")[0].replace("versions 2, 3", "")
    assert failed and "version 1" in failed[0].reason and "default" in failed[0].reason


def test_prune_deletes_old_amis_with_their_snapshots(cloud, specs, cli):
    from factory.register import prune

    old = cloud.bake("salmon-quant")
    for _ in range(2):
        time.sleep(1.1)  # CreationDate has whole seconds: keep the order unambiguous
        cloud.bake("salmon-quant")
    snaps = [m["Ebs"]["SnapshotId"] for m in cloud.ec2.describe_images(ImageIds=[old])["Images"][0]["BlockDeviceMappings"]]
    result = prune(cloud.clients, keep=2, dry_run=False)
    assert [c.name for c in result.changes if c.resource == "ami"] == [old] and not result.failed
    left = {s["SnapshotId"] for p in cloud.ec2.get_paginator("describe_snapshots").paginate(OwnerIds=["self"]) for s in p["Snapshots"]}
    assert not set(snaps) & left


def test_arm64_defaults_to_graviton_types_and_refuses_x86(tmp_path):
    from factory.spec import load_spec, validate_paths

    spec = tmp_path / "arm-task.yaml"
    spec.write_text(
        "name: arm-task\ndescription: an arm64 task\nimage: {architecture: arm64}\n"
        "storage: {max_input_gib: 10, footprint: {index_gib: 1, scratch_gib: 1, output_gib: 1}}\n"
    )
    assert load_spec(spec).batch.instance_types == ("default_arm64",)
    for bad in ("optimal", "default_x86_64", "c6i.large"):
        spec.write_text(spec.read_text().split("batch:")[0] + f"batch: {{instance_types: [{bad}]}}\n")
        report = validate_paths([spec])
        assert not report.valid and any("batch.instance_types" in p.field for p in report.problems), bad
    spec.write_text(spec.read_text().split("batch:")[0] + "batch: {instance_types: [m7g.xlarge, default_arm64]}\n")
    assert validate_paths([spec]).valid


def test_prune_retires_a_tier_no_spec_uses_and_nothing_else(cloud, specs):
    from factory.register import prune
    from factory.register.waits import Waiter
    from factory.tiers import tiers_for

    bake_all(cloud, specs)
    first = run(cloud, specs)
    gone = first.for_task("star-align")
    kept_specs = [s for s in specs if s.name != "star-align"]
    in_use = {t.name for t in tiers_for(kept_specs, None)[0]}
    assert gone.tier not in in_use
    before_ces, before_queues = cloud.ces(), cloud.queues()

    tasks = {s.name for s in kept_specs}
    ssm = cloud.clients.ssm()
    assert ssm.get_parameter(Name="/factory/star-align/ami-id")["Parameter"]["Value"] == gone.ami_id
    plan = prune(cloud.clients, keep=3, dry_run=True, tiers_in_use=in_use, tasks_in_use=tasks)
    retired = {(c.resource, c.name) for c in plan.changes if c.action == "delete" and ("used by no spec" in c.reason or "no spec" in c.reason)}
    name = f"factory-{gone.tier}"
    assert retired == {("job-queue", name), ("compute-environment", name), ("launch-template", name), ("parameter", "/factory/star-align/ami-id")}
    assert cloud.ces() == before_ces and cloud.queues() == before_queues  # a dry run

    prune(cloud.clients, keep=3, dry_run=False, tiers_in_use=in_use, waiter=Waiter(60, 0.05), tasks_in_use=tasks)
    with pytest.raises(ssm.exceptions.ParameterNotFound):
        ssm.get_parameter(Name="/factory/star-align/ami-id")
    assert ssm.get_parameter(Name="/factory/salmon-quant/ami-id")["Parameter"]["Value"]
    time.sleep(1.2)  # past the local cloud's DELETING
    assert name not in cloud.queues() and name not in cloud.ces()
    assert cloud.ec2.describe_launch_templates(Filters=[{"Name": "launch-template-name", "Values": [name]}])["LaunchTemplates"] == []
    for task in ("salmon-index", "salmon-quant"):  # the others are untouched
        other = f"factory-{first.for_task(task).tier}"
        assert cloud.queues()[other]["state"] == "ENABLED" and cloud.ces()[other]["state"] == "ENABLED"
    assert not run(cloud, kept_specs).changed


def test_a_growing_task_gets_a_data_volume_and_the_agents_tags(cloud, specs):
    from factory.spec import GrowSpec

    quant = next(s for s in specs if s.name == "salmon-quant")
    growing = dataclasses.replace(quant, storage=dataclasses.replace(quant.storage, grow=GrowSpec(max_gib=500)))
    cloud.bake(growing.name, growing.spec_hash)
    tier = Tier(growing.name, 42, (growing.name,), (), growing.name)
    result = register_targets_for(cloud, [growing], [tier])
    data = cloud.lt_version(f"factory-{result.tiers[0].tier}")["LaunchTemplateData"]
    (volume,) = data["BlockDeviceMappings"]  # the root stays the AMI's: no mapping for it
    assert volume["DeviceName"] == growing.image.family_info.data_device != growing.image.family_info.sized_device
    assert volume["Ebs"] == {"VolumeSize": 42, "VolumeType": "gp3", "Encrypted": True, "DeleteOnTermination": True}
    kinds = {t["ResourceType"]: {x["Key"]: x["Value"] for x in t["Tags"]} for t in data["TagSpecifications"] if t["ResourceType"] != "launch-template"}
    assert kinds == {k: {"factory:grow": "true", "factory:task": "salmon-quant"} for k in ("instance", "volume")}
    assert not register_targets_for(cloud, [growing], [tier]).changed  # AWS's answer compares equal
    plain = register_targets_for(cloud, [quant], [tier])  # grow removed: back to the sized root volume
    assert "instance and volume tags (storage.grow)" in plain.tiers[0].changes[0].reason


def test_cli_register_repairs_tags_a_hand_changed(cloud, specs, cli, tmp_path):
    """A tag removed by hand comes back (TagResource, CreateTags) and a stale task-list tag
    goes (UntagResource, DeleteTags), through the CLI as a user runs it."""
    bake_all(cloud, specs)
    env = {"AWS_ENDPOINT_URL": cloud.endpoint, "COLUMNS": "200"}
    common = ["salmon-quant", "--specs-dir", SPECS, "--config", write_config(cloud, tmp_path)]
    assert cli("register", *common, env=env).exit_code == 0
    name = f"factory-{run(cloud, specs).for_task('salmon-quant').tier}"
    lt = cloud.ec2.describe_launch_templates(LaunchTemplateNames=[name])["LaunchTemplates"][0]["LaunchTemplateId"]
    cloud.ec2.create_tags(Resources=[lt], Tags=[{"Key": "factory:tasks:2", "Value": "gone-task"}])
    cloud.ec2.delete_tags(Resources=[lt], Tags=[{"Key": "factory:tier"}])
    queue_arn = cloud.queues()[name]["jobQueueArn"]
    cloud.batch.tag_resource(resourceArn=queue_arn, tags={"factory:tasks:2": "gone-task"})
    cloud.batch.untag_resource(resourceArn=queue_arn, tagKeys=["factory:tier"])
    r = cli("register", *common, env=env)
    assert r.exit_code == 0, r.stderr
    lt_tags = {t["Key"]: t["Value"] for t in cloud.ec2.describe_launch_templates(LaunchTemplateNames=[name])["LaunchTemplates"][0]["Tags"]}
    assert "factory:tasks:2" not in lt_tags and lt_tags["factory:tier"]
    queue_tags = cloud.queues()[name]["tags"]
    assert "factory:tasks:2" not in queue_tags and queue_tags["factory:tier"]
