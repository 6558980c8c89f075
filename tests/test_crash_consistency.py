"""A run that dies between two AWS calls is finished by the next run: proven for every call.

For each scenario (first register, an AMI rolled in place, a blue/green replacement, a
prune), a clean run is recorded at the local cloud's end of the wire; then, for every
mutating call that run made, a fresh account is set up the same way, that call is failed
once (`factory local fault`'s mechanism), and:

- the command exits 1 with a message naming what it was doing, and no traceback;
- the next run exits 0 and leaves exactly the clean run's resources (no duplicate, no
  orphan), and a plan after it is `unchanged`.

The commands run in-process through the CLI with exceptions not caught: a traceback
(an exception the CLI's error boundary did not turn into a message) fails the test.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import time
from pathlib import Path

import pytest

from factory.aws import Clients
from factory.local.aws import faults
from factory.local.aws.moto_server import MotoServer
from tests.conftest import SPECS

REGION = "us-east-1"
TASK = "salmon-quant"
READS = ("Describe", "List", "Get")


@pytest.fixture(autouse=True)
def dummy_keys(monkeypatch):
    for var in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")


@pytest.fixture(scope="module")
def server():
    s = MotoServer.start(state_delay=0.2)
    yield s
    s.stop()


@dataclasses.dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


class Account:
    def __init__(self, server: MotoServer, tmp: Path):
        self.server = server
        self.tmp = tmp
        self.clients = Clients(REGION, server.endpoint)
        self.second = None  # the copy_to account's clients_for, once a scenario distributes

    def reset(self, regular_role: bool = False) -> None:
        self.server.reset()
        self.second = None
        faults.clear(self.server.endpoint)
        self.clients = Clients(REGION, self.server.endpoint)
        iam = self.clients.client("iam")
        iam.create_role(RoleName="ecsInstanceRole", AssumeRolePolicyDocument="{}")
        iam.create_instance_profile(InstanceProfileName="ecsInstanceRole")
        iam.add_role_to_instance_profile(InstanceProfileName="ecsInstanceRole", RoleName="ecsInstanceRole")
        iam.create_role(RoleName="AWSBatchServiceRole", AssumeRolePolicyDocument="{}")
        config = "batch:\n  service_role: AWSBatchServiceRole\n" if regular_role else "batch: {}\n"
        (self.tmp / "factory.yaml").write_text(config)

    def bake(self, task: str = TASK) -> str:
        ec2 = self.clients.ec2()
        base = ec2.describe_images(Owners=["amazon"], Filters=[{"Name": "name", "Values": ["amzn2-ami-ecs-hvm-*x86_64-ebs"]}])["Images"][0]["ImageId"]
        instance = ec2.run_instances(ImageId=base, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
        time.sleep(1.05)  # CreationDate has whole seconds: the newest AMI is unambiguous
        ami = ec2.create_image(InstanceId=instance, Name=f"factory-{task}-{time.time_ns()}")["ImageId"]
        ec2.create_tags(Resources=[ami], Tags=[{"Key": "factory:task", "Value": task}, {"Key": "factory:image-hash", "Value": "test"}])
        ec2.terminate_instances(InstanceIds=[instance])
        return ami

    def factory(self, *args: str) -> Result:
        from typer.testing import CliRunner

        from factory.cli import app

        env = {"AWS_ENDPOINT_URL": self.server.endpoint, "AWS_REGION": REGION, "COLUMNS": "200"}
        r = CliRunner().invoke(app, [*args, "--config", str(self.tmp / "factory.yaml")], env=env, catch_exceptions=False)
        return Result(r.exit_code, r.stdout, r.stderr)

    def register(self) -> Result:
        return self.factory("register", TASK, "--specs-dir", str(SPECS))

    def state(self) -> dict:
        """Every factory resource, by name, with AMI ids replaced by their task (ids differ per run)."""
        ec2, batch = self.clients.ec2(), self.clients.batch()
        ami_task = {
            i["ImageId"]: f"{t['Value']}#{n}"
            for n, i in enumerate(sorted((i for p in ec2.get_paginator("describe_images").paginate(Owners=["self"]) for i in p["Images"]), key=lambda i: i["CreationDate"]))
            for t in i.get("Tags", []) if t["Key"] == "factory:task"
        }
        out: dict = {"amis": sorted(ami_task.values())}

        def ce_name(name: str) -> str:  # a replacement's suffix hashes its settings, whose subnet ids differ per account
            return re.sub(r"-[0-9a-f]{8}$", "-<settings hash>", name)

        for p in ec2.get_paginator("describe_launch_templates").paginate(PaginationConfig={"PageSize": 200}):
            for lt in p["LaunchTemplates"]:
                versions = [v for q in ec2.get_paginator("describe_launch_template_versions").paginate(LaunchTemplateId=lt["LaunchTemplateId"]) for v in q["LaunchTemplateVersions"]]
                out[f"lt:{lt['LaunchTemplateName']}"] = (
                    lt["DefaultVersionNumber"],
                    sorted((v["VersionNumber"], ami_task.get(v["LaunchTemplateData"].get("ImageId"), "?")) for v in versions),
                    sorted((t["Key"], t["Value"]) for t in lt.get("Tags", [])),
                )
        for p in batch.get_paginator("describe_compute_environments").paginate():
            for ce in p["computeEnvironments"]:
                cr = ce["computeResources"]
                out[f"ce:{ce_name(ce['computeEnvironmentName'])}"] = (ce["state"], ce["status"], cr["launchTemplate"]["version"], ce["serviceRole"].rsplit("/", 1)[-1], sorted(ce["tags"].items()))
        for p in batch.get_paginator("describe_job_queues").paginate():
            for q in p["jobQueues"]:
                out[f"queue:{q['jobQueueName']}"] = (q["state"], [ce_name(o["computeEnvironment"].rsplit("/", 1)[-1]) for o in q["computeEnvironmentOrder"]], sorted(q["tags"].items()))
        # The task's AMI parameter: where it points now (its history depends on where a run failed).
        for p in self.clients.ssm().get_parameters(Names=[f"/factory/{TASK}/ami-id"])["Parameters"]:
            out[f"parameter:{p['Name']}"] = ami_task.get(p["Value"], "?")
        out.update(self.distributed(ami_task))
        return out

    def distributed(self, ami_task: dict) -> dict:
        """distribute: per region and account the copies (by source task, state and who may
        launch them), and who may launch or copy the source AMIs."""
        out: dict = {}
        for ami, task in ami_task.items():
            perms = self.clients.ec2().describe_image_attribute(ImageId=ami, Attribute="launchPermission")["LaunchPermissions"]
            if perms:
                out[f"shared:{task}"] = sorted(sorted(p.items()) for p in perms)
        accounts = {"": lambda region: Clients(region, self.server.endpoint)}
        if self.second is not None:
            accounts[SECOND] = self.second
        for account, clients_for in accounts.items():
            for region in COPY_REGIONS + ((REGION,) if account else ()):
                ec2 = clients_for(region).ec2()
                copies = [i for p in ec2.get_paginator("describe_images").paginate(Owners=["self"], Filters=[{"Name": "tag-key", "Values": ["factory:copy-of"]}])
                          for i in p["Images"]]
                if copies:
                    out[f"copies:{account}:{region}"] = sorted(
                        (i["State"], sorted(sorted(p.items()) for p in ec2.describe_image_attribute(ImageId=i["ImageId"], Attribute="launchPermission")["LaunchPermissions"]))
                        for i in copies)
        return out

    def settle(self) -> None:
        time.sleep(0.6)  # past the local cloud's state delay: DELETING resources are gone


def _first(acct: Account) -> None:
    acct.bake()


def _roll(acct: Account) -> None:
    acct.bake()
    assert acct.register().returncode == 0
    acct.bake()


def _replace(acct: Account) -> None:
    _roll(acct)


def _prune_setup(acct: Account) -> None:
    for _ in range(3):
        acct.bake()
        assert acct.register().returncode == 0


def _retire_setup(acct: Account) -> None:
    """Every task registered; then star-align's spec is deleted (FEWER: the specs without it)."""
    for task in sorted(p.stem for p in SPECS.glob("*.yaml")):
        acct.bake(task)
    assert acct.factory("register", "--all", "--specs-dir", str(SPECS)).returncode == 0
    fewer = acct.tmp / "fewer-specs"
    if not fewer.exists():
        shutil.copytree(SPECS, fewer)
        (fewer / "star-align.yaml").unlink()


COPY_REGIONS = ("us-west-2", "eu-west-1")
SECOND = "444455556666"
DISTRIBUTE = f"""batch: {{}}
builder: {{kms_key: alias/factory-ami}}
distribute:
  regions: [{', '.join(COPY_REGIONS)}]
  kms_keys: {{{', '.join(f'{r}: alias/factory-ami' for r in COPY_REGIONS)}}}
  share_with: ["111122223333", "arn:aws:organizations::111122223333:organization/o-abc123def4"]
  copy_to: [{{account: "{SECOND}", role: "arn:aws:iam::{SECOND}:role/factory-distribute"}}]
"""


def _distribute_setup(acct: Account) -> None:
    """A baked AMI, a customer key `alias/factory-ami` in every region of both accounts, and
    a factory.yaml distributing to two regions, sharing, and copying into a second account."""
    from factory.distribute.accounts import assumed

    acct.bake()
    (acct.tmp / "factory.yaml").write_text(DISTRIBUTE)
    acct.second = assumed(acct.clients, f"arn:aws:iam::{SECOND}:role/factory-distribute", SECOND)
    for clients_for in (lambda region: Clients(region, acct.server.endpoint), acct.second):
        for region in (REGION, *COPY_REGIONS):
            kms = clients_for(region).client("kms")
            kms.create_alias(AliasName="alias/factory-ami", TargetKeyId=kms.create_key()["KeyMetadata"]["KeyId"])


SCENARIOS = {
    # name: (set-up, the command, a regular service role (blue/green) or the service-linked one)
    "first register": (_first, ("register", TASK, "--specs-dir", str(SPECS)), False),
    "AMI rolled in place": (_roll, ("register", TASK, "--specs-dir", str(SPECS)), False),
    "blue/green replacement": (_replace, ("register", TASK, "--specs-dir", str(SPECS)), True),
    "prune": (_prune_setup, ("prune", "--keep", "1", "--apply", "--specs-dir", str(SPECS)), False),
    "prune a deleted spec's tier": (_retire_setup, ("prune", "--apply", "--specs-dir", "FEWER"), False),
    "distribute to two regions and a second account": (_distribute_setup, ("distribute", TASK, "--specs-dir", str(SPECS)), False),
}


@pytest.mark.slow
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_every_mutating_call_failed_once_is_finished_by_the_next_run(server, tmp_path, scenario):
    setup, command, regular_role = SCENARIOS[scenario]
    acct = Account(server, tmp_path)
    command = tuple(str(tmp_path / "fewer-specs") if a == "FEWER" else a for a in command)

    acct.reset(regular_role)
    setup(acct)
    server.calls(clear=True)
    clean = acct.factory(*command)
    assert clean.returncode == 0, clean.stderr
    mutating = list(dict.fromkeys(c for c in server.calls() if not c.split(":")[1].startswith(READS)))
    assert mutating, "the clean run made no change: nothing would be proven"
    acct.settle()
    want = acct.state()

    for operation in mutating:
        acct.reset(regular_role)
        setup(acct)
        faults.arm(server.endpoint, faults.Fault(operation, "error"))
        failed = acct.factory(*command)
        assert failed.returncode == 1, f"{operation}: {failed.stdout}{failed.stderr}"
        assert "InjectedFault" in failed.stderr, f"{operation}: {failed.stderr}"
        assert faults.armed(server.endpoint) == [], f"{operation} was never called"
        again = acct.factory(*command)
        assert again.returncode == 0, f"after {operation}: {again.stderr}"
        acct.settle()
        assert acct.state() == want, f"after a failed {operation}, the next run left another state"
        if command[0] == "register":
            plan = acct.factory("plan", TASK, "--specs-dir", str(SPECS))
            assert plan.returncode == 0 and "unchanged: nothing to do" in plan.stdout, f"after {operation}: {plan.stdout}"
