"""Each task's AMI in SSM (`/factory/<task>/ami-id`), `factory rollback`, and the plan's
stale-image note, against the local cloud's AWS endpoint over real HTTP (no mocks).

AMIs are made as `factory bake` leaves them (an image of an instance, tagged), without
Packer: tests/test_status.py runs the one real bake of this feature.
"""

from __future__ import annotations

import dataclasses
import time

import pytest

from factory.aws import Clients
from factory.cloud import Cloud
from factory.config import FactoryConfig
from factory.errors import FactoryError
from factory.image_identity import expected_image_hash
from factory.local.aws import faults
from factory.local.aws.moto_server import MotoServer
from factory.register import register_tasks
from factory.register.parameter import history, parameter_name
from factory.rollback import rollback
from factory.spec import load_specs
from tests.conftest import SPECS

REGION = "us-east-1"
TASK = "salmon-quant"


@pytest.fixture(scope="module")
def server():
    s = MotoServer.start(state_delay=0.2)
    yield s
    s.stop()


@pytest.fixture
def account(server, monkeypatch):
    server.reset()
    faults.clear(server.endpoint)
    for var in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    acct = Account(server)
    iam = acct.clients.client("iam")
    iam.create_service_linked_role(AWSServiceName="batch.amazonaws.com")
    iam.create_role(RoleName="ecsInstanceRole", AssumeRolePolicyDocument="{}")
    iam.create_instance_profile(InstanceProfileName="ecsInstanceRole")
    iam.add_role_to_instance_profile(InstanceProfileName="ecsInstanceRole", RoleName="ecsInstanceRole")
    return acct


@pytest.fixture(scope="module")
def specs():
    """The shipped specs on EBS without a GPU: the tier counts and caps below are theirs
    (the GPU spec's tier is registered in tests/test_gpu.py, star-align-nvme's in
    tests/test_local_run.py; each is a tier group of its own)."""
    return [s for s in load_specs([SPECS]) if s.image.accelerator == "none" and not s.storage.on_instance_store]


class Account:
    def __init__(self, server: MotoServer):
        self.server = server
        self.clients = Clients(REGION, server.endpoint)
        self.cloud = Cloud("aws", _clients={REGION: self.clients})

    @property
    def ec2(self):
        return self.clients.ec2()

    @property
    def ssm(self):
        return self.clients.ssm()

    def base(self, architecture: str = "x86_64") -> str:
        name = "amzn2-ami-ecs-hvm-*x86_64-ebs" if architecture == "x86_64" else "amzn2-ami-ecs-hvm-*arm64-ebs"
        return self.ec2.describe_images(Owners=["amazon"], Filters=[{"Name": "name", "Values": [name]}])["Images"][0]["ImageId"]

    def bake(self, task: str, architecture: str = "x86_64", **tags: str) -> str:
        """An AMI as `factory bake` leaves it: made from an instance, tagged factory:task."""
        instance = self.ec2.run_instances(ImageId=self.base(architecture), MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
        time.sleep(1.05)  # CreationDate has whole seconds: the newest AMI is unambiguous
        ami = self.ec2.create_image(InstanceId=instance, Name=f"factory-{task}-{time.time_ns()}")["ImageId"]
        all_tags = {"factory:task": task, "factory:image-hash": "test", **tags}
        self.ec2.create_tags(Resources=[ami], Tags=[{"Key": k, "Value": v} for k, v in all_tags.items()])
        self.ec2.terminate_instances(InstanceIds=[instance])
        return ami

    def register(self, specs, config: FactoryConfig | None = None, **kw):
        return register_tasks(specs, self.clients, config=config or FactoryConfig(), all_specs=kw.pop("all_specs", specs), poll=0.01, **kw)

    def parameter(self, task: str) -> dict:
        return self.ssm.get_parameter(Name=parameter_name(task))["Parameter"]

    def values(self, task: str) -> list[str]:
        return [v["Value"] for v in history(self.ssm, task)]

    def lt(self, name: str) -> dict:
        return self.ec2.describe_launch_template_versions(LaunchTemplateName=name, Versions=["$Default"])["LaunchTemplateVersions"][0]

    def ce(self, name: str) -> dict:
        return self.clients.batch().describe_compute_environments(computeEnvironments=[name])["computeEnvironments"][0]

    def puts(self) -> list[str]:
        return [c for c in self.server.calls() if c == "ssm:PutParameter"]


def only(specs, name):
    return [s for s in specs if s.name == name]


# ---------------------------------------------------------------------------------------
# The parameter


def test_register_points_each_task_parameter_at_its_ami_and_keeps_the_history(account, specs):
    salmon = only(specs, TASK)
    first = account.bake(TASK)
    account.register(salmon, all_specs=specs)
    p = account.parameter(TASK)
    assert p["Value"] == first and p["DataType"] == "aws:ec2:image" and p["Type"] == "String"

    account.server.calls(clear=True)
    again = account.register(salmon, all_specs=specs)
    assert account.puts() == []  # already right: not written again
    assert [(c.resource, c.action) for c in again.tiers[0].changes if c.resource == "ssm-parameter"] == [("ssm-parameter", "unchanged")]

    second = account.bake(TASK)
    plan = account.register(salmon, all_specs=specs, dry_run=True)
    (change,) = [c for c in plan.tiers[0].changes if c.resource == "ssm-parameter"]
    assert (change.name, change.action, change.reason) == (parameter_name(TASK), "update", f"{first} -> {second}")
    assert account.parameter(TASK)["Value"] == first  # the plan wrote nothing
    account.register(salmon, all_specs=specs)
    assert account.values(TASK) == [first, second]


def test_every_task_of_a_tier_names_the_tier_ami(account, specs):
    amis = {s.name: account.bake(s.name) for s in specs}
    result = account.register(specs, config=FactoryConfig(max_tiers=2))
    shared = next(t for t in result.tiers if len(t.tasks) == 2)
    for task in shared.tasks:
        assert account.parameter(task)["Value"] == amis["star-align"] == shared.ami_id


def test_a_failed_put_is_finished_by_the_next_run(account, specs):
    salmon = only(specs, TASK)
    ami = account.bake(TASK)
    faults.arm(account.server.endpoint, faults.Fault("ssm:PutParameter", "error"))
    with pytest.raises(FactoryError, match="writing SSM parameter /factory/salmon-quant/ami-id: InjectedFault"):
        account.register(salmon, all_specs=specs)
    assert history(account.ssm, TASK) == []
    plan = account.register(salmon, all_specs=specs, dry_run=True)
    assert [c.action for c in plan.tiers[0].changes] == ["unchanged", "unchanged", "unchanged", "create"]
    account.register(salmon, all_specs=specs)
    assert account.values(TASK) == [ami]


# ---------------------------------------------------------------------------------------
# The local cloud's rule: SSM checks an aws:ec2:image value after PutParameter answers


@pytest.fixture(scope="module")
def checking_server():
    """A server whose SSM checks an aws:ec2:image value 5 s after PutParameter answers (the
    module's server: 0.1 s): the read right after the call comes before the check however
    loaded the machine is, which the 0.1 s window did not promise."""
    s = MotoServer.start(state_delay=0.2, stale_read=5.0)
    yield s
    s.stop()


def test_an_ami_parameter_is_stored_after_its_check_and_only_for_an_available_ami(account, checking_server):
    account = Account(checking_server)
    ssm = account.ssm
    name = "/factory/rule/ami-id"
    for bad in ("ami-0123456789abcdef0", "not-an-ami"):
        answer = ssm.put_parameter(Name=name, Value=bad, Type="String", DataType="aws:ec2:image", Overwrite=True)
        assert answer["ResponseMetadata"]["HTTPStatusCode"] == 200  # AWS answers before it checks
    good = account.base()
    ssm.put_parameter(Name=name, Value=good, Type="String", DataType="aws:ec2:image", Overwrite=True)
    with pytest.raises(ssm.exceptions.ParameterNotFound):
        ssm.get_parameter(Name=name)  # not checked yet
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not ssm.get_parameters(Names=[name])["Parameters"]:
        time.sleep(0.2)
    assert ssm.get_parameter(Name=name)["Parameter"]["Value"] == good
    assert [v["Value"] for v in ssm.get_parameter_history(Name=name)["Parameters"]] == [good]
    # A text parameter is stored at once, whatever it holds, as before.
    ssm.put_parameter(Name="/factory/rule/text", Value="anything", Type="String")
    assert ssm.get_parameter(Name="/factory/rule/text")["Parameter"]["Value"] == "anything"


def test_history_is_read_to_its_last_page(account):
    ssm = account.ssm
    amis = [account.base("x86_64"), account.base("arm64")] * 4
    for ami in amis:
        ssm.put_parameter(Name=parameter_name("paged"), Value=ami, Type="String", DataType="text", Overwrite=True)
    pages = list(ssm.get_paginator("get_parameter_history").paginate(Name=parameter_name("paged"), PaginationConfig={"PageSize": 3}))
    assert len(pages) == 3  # moto pages SSM itself
    assert [v["Value"] for v in history(ssm, "paged")] == amis


# ---------------------------------------------------------------------------------------
# Rollback


def test_rollback_registers_the_previous_ami_and_moves_the_parameter_back(account, specs):
    salmon = only(specs, TASK)
    old = account.bake(TASK)
    account.register(salmon, all_specs=specs)
    new = account.bake(TASK)
    account.register(salmon, all_specs=specs)
    name = f"factory-{TASK}"
    assert account.lt(name)["VersionNumber"] == 2

    plan = rollback(salmon[0], specs, account.cloud, config=FactoryConfig(), dry_run=True, poll=0.01)
    assert (plan.from_ami, plan.to_ami) == (new, old) and account.values(TASK) == [old, new]

    done = rollback(salmon[0], specs, account.cloud, config=FactoryConfig(), poll=0.01)
    assert (done.from_ami, done.to_ami, done.source) == (new, old, f"{parameter_name(TASK)} version 1")
    version = account.lt(name)
    assert version["VersionNumber"] == 3 and version["LaunchTemplateData"]["ImageId"] == old  # a new version, not the old one
    assert account.ce(name)["computeResources"]["launchTemplate"]["version"] == "3"
    assert account.values(TASK) == [old, new, old]
    changes = {c.resource: c.action for c in done.result.tiers[0].changes}
    assert changes == {"launch-template": "update", "compute-environment": "update", "job-queue": "unchanged", "ssm-parameter": "update"}

    # --to goes anywhere the task has been; the default goes back once more (to `new`).
    again = rollback(salmon[0], specs, account.cloud, config=FactoryConfig(), poll=0.01)
    assert again.to_ami == new and account.values(TASK)[-1] == new


def test_rollback_of_a_smaller_task_rolls_its_tier(account, specs):
    config = FactoryConfig(max_tiers=2)
    account.bake("salmon-index")
    account.bake(TASK)
    old = account.bake("star-align")
    account.register(specs, config=config)
    new = account.bake("star-align")
    account.register(specs, config=config)
    done = rollback(only(specs, "salmon-index")[0], specs, account.cloud, config=config, poll=0.01)
    assert (done.ami_task, done.from_ami, done.to_ami) == ("star-align", new, old)
    assert account.parameter("salmon-index")["Value"] == old == account.parameter("star-align")["Value"]
    assert not [n for t in done.result.tiers for n in t.notes if "not used" in n]


def test_rollback_refuses_what_the_task_cannot_run(account, specs):
    salmon = only(specs, TASK)
    with pytest.raises(FactoryError, match=r"no AMI history \(/factory/salmon-quant/ami-id does not exist\)"):
        rollback(salmon[0], specs, account.cloud, config=FactoryConfig())
    ami = account.bake(TASK)
    account.register(salmon, all_specs=specs)
    with pytest.raises(FactoryError, match="has named only .*: there is no previous AMI"):
        rollback(salmon[0], specs, account.cloud, config=FactoryConfig())
    cases = {
        "ami-0123456789abcdef0": "does not exist in us-east-1",
        account.bake(TASK, "arm64"): "it is arm64, the task is x86_64",
        account.bake("star-align"): "it was baked for star-align .* and salmon-quant never ran it",
        account.base(): "it was baked for no factory task",
    }
    for to, message in cases.items():
        with pytest.raises(FactoryError, match=message):
            rollback(salmon[0], specs, account.cloud, to=to, config=FactoryConfig())
    assert account.values(TASK) == [ami]  # nothing moved


def test_rollback_cli_says_what_moved(account, specs, cli, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", account.server.endpoint)
    monkeypatch.setenv("AWS_REGION", REGION)
    salmon = only(specs, TASK)
    old = account.bake(TASK)
    account.register(salmon, all_specs=specs)
    new = account.bake(TASK)
    account.register(salmon, all_specs=specs)
    result = cli("rollback", TASK, "--specs-dir", SPECS, "--dry-run")
    assert result.exit_code == 0, result.output
    assert f"would roll {TASK} back: {new} -> {old}" in result.stdout
    refused = cli("rollback", TASK, "--specs-dir", SPECS, "--to", "ami-0123456789abcdef0")
    assert refused.exit_code == 1 and "does not exist" in refused.stderr and "Traceback" not in refused.output


# ---------------------------------------------------------------------------------------
# The plan's note compares image hashes, not spec hashes


def test_plan_notes_a_changed_image_not_a_moved_volume(account, specs):
    (spec,) = only(specs, TASK)
    base = account.base()
    ami = account.bake(TASK, **{"factory:base-ami": base, "factory:image-hash": expected_image_hash(spec, base), "factory:spec-hash": spec.spec_hash})
    account.register([spec], all_specs=specs)

    bigger = dataclasses.replace(spec, storage=dataclasses.replace(spec.storage, max_input_gib=spec.storage.max_input_gib * 2), spec_hash="changed")
    plan = account.register([bigger], all_specs=[bigger, *[s for s in specs if s.name != TASK]], dry_run=True)
    tier = plan.tiers[0]
    assert tier.ami_id == ami and any("volume" in c.reason for c in tier.changes)
    assert tier.notes == []  # the volume moved; the image is the same

    other_prefix = dataclasses.replace(spec, awscli=dataclasses.replace(spec.awscli, prefix="/opt/miniconda"))
    plan = account.register([other_prefix], all_specs=[other_prefix, *[s for s in specs if s.name != TASK]], dry_run=True)
    (note,) = plan.tiers[0].notes
    assert f"AMI {ami} was baked from other image content" in note and f"factory bake {TASK}" in note
