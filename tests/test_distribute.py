"""Distribution (factory.distribute) against the local cloud's moto server over HTTP: an
AMI copied to two more regions in parallel, encrypted with each region's key, its tags
copied, shared per region; a second run changes nothing; faults on CopyImage and
ModifyImageAttribute ridden out by the next run, with nothing half-made left.

The source AMI is made as test_register's `Cloud.bake` makes one (an instance's image,
tagged as a bake tags it): distribution reads only the AMI, so no Packer bake is needed."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from factory.aws import Clients, resource_tags
from factory.cloud import Cloud
from factory.config import load_config
from factory.distribute.copies import COPY_OF_TAG
from factory.distribute.run import distribute_image
from factory.local.aws import faults
from factory.spec import load_spec
from tests.conftest import SPECS

HOME, WEST, EU = "us-east-1", "us-west-2", "eu-west-1"
ORG = "arn:aws:organizations::111122223333:organization/o-abc123def4"
OU = "arn:aws:organizations::111122223333:ou/o-abc123def4/ou-ab12-cd34ef56"
PARTNER = "111122223333"
TASK = "salmon-quant"
CONFIG = f"""\
builder:
  kms_key: alias/factory-ami
distribute:
  regions: [{WEST}, {EU}]
  kms_keys: {{{HOME}: alias/factory-ami, {WEST}: alias/factory-ami, {EU}: alias/factory-ami}}
  share_with: ["{PARTNER}", "{ORG}", "{OU}"]
"""


@pytest.fixture(scope="module")
def account(moto, tmp_path_factory):
    """moto with a customer-managed key `alias/factory-ami` in each region, a specs folder
    and a factory.yaml distributing to us-west-2 and eu-west-1."""
    moto.reset()
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_PROFILE")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    os.environ.pop("AWS_PROFILE", None)
    os.environ.pop("AWS_ENDPOINT_URL", None)
    for region in (HOME, WEST, EU):
        kms = Clients(region, moto.endpoint).client("kms")
        key = kms.create_key(Description="factory AMIs")["KeyMetadata"]["KeyId"]
        kms.create_alias(AliasName="alias/factory-ami", TargetKeyId=key)
    iam = Clients(HOME, moto.endpoint).client("iam")  # what register needs, as test_register's open_account makes it
    iam.create_service_linked_role(AWSServiceName="batch.amazonaws.com")
    iam.create_role(RoleName="ecsInstanceRole", AssumeRolePolicyDocument="{}")
    iam.create_instance_profile(InstanceProfileName="ecsInstanceRole")
    iam.add_role_to_instance_profile(InstanceProfileName="ecsInstanceRole", RoleName="ecsInstanceRole")
    folder = tmp_path_factory.mktemp("dist")
    specs = folder / "specs"
    shutil.copytree(SPECS, specs)
    (folder / "factory.yaml").write_text(CONFIG)
    yield {"moto": moto, "specs": specs, "config": folder / "factory.yaml", "folder": folder}
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


class Local:
    """Clients per region on the module's moto (what Cloud.clients gives a command)."""

    def __init__(self, endpoint: str):
        self.endpoint = endpoint
        self._clients: dict[str, Clients] = {}

    def __call__(self, region: str) -> Clients:
        if region not in self._clients:
            self._clients[region] = Clients(region, self.endpoint)
        return self._clients[region]


def bake(clients: Clients, task: str = TASK) -> str:
    """An AMI and snapshot as `factory bake` leaves them: tagged with the task and its content hash."""
    ec2 = clients.ec2()
    base = ec2.describe_images(Owners=["amazon"], Filters=[{"Name": "name", "Values": ["amzn2-ami-ecs-hvm-*x86_64-ebs"]}])["Images"][0]["ImageId"]
    instance = ec2.run_instances(ImageId=base, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    ami = ec2.create_image(InstanceId=instance, Name=f"factory-{task}-{time.time_ns()}")["ImageId"]
    snap = ec2.describe_images(ImageIds=[ami])["Images"][0]["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    tags = [{"Key": "factory:task", "Value": task}, {"Key": "factory:image-hash", "Value": f"hash-{ami}"}, {"Key": "factory:os", "Value": "Amazon 2023"}]
    ec2.create_tags(Resources=[ami, snap], Tags=tags)
    ec2.terminate_instances(InstanceIds=[instance])
    return ami


def copies_of(clients: Clients, ami: str) -> list[dict]:
    return clients.ec2().describe_images(Owners=["self"], Filters=[{"Name": f"tag:{COPY_OF_TAG}", "Values": [ami]}])["Images"]


def setup(account):
    spec = load_spec(account["specs"] / f"{TASK}.yaml")
    config = load_config(account["config"])
    local = Local(account["moto"].endpoint)
    return spec, config, local, config.distribution_for(spec)


def run(local, spec, ami, dist):
    return distribute_image(local, spec, ami, dist, poll=0.2, timeout=20)


def test_one_ami_to_two_more_regions_encrypted_tagged_and_shared(account):
    spec, config, local, dist = setup(account)
    ami = bake(local(HOME))
    result = run(local, spec, ami, dist)
    assert result.ok, result.errors
    by_region = result.ami_by_region()
    assert set(by_region) == {HOME, WEST, EU} and by_region[HOME] == ami
    for region in (WEST, EU):
        ec2 = local(region).ec2()
        image = ec2.describe_images(ImageIds=[by_region[region]])["Images"][0]
        tags = resource_tags(image)
        # CopyImageTags brought the source's tags; TagSpecifications added the copy's identity
        assert tags["factory:task"] == TASK and tags["factory:os"] == "Amazon 2023" and tags[COPY_OF_TAG] == ami
        assert tags["factory:image-hash"] == f"hash-{ami}" and image["State"] == "available"
        snap = ec2.describe_snapshots(SnapshotIds=[image["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]])["Snapshots"][0]
        key = local(region).client("kms").describe_key(KeyId="alias/factory-ami")["KeyMetadata"]["Arn"]
        assert snap["Encrypted"] and snap["KmsKeyId"] == key  # the region's own key
        assert resource_tags(snap)["factory:task"] == TASK and resource_tags(snap)[COPY_OF_TAG] == ami  # snapshot tags, per region
        perms = ec2.describe_image_attribute(ImageId=by_region[region], Attribute="launchPermission")["LaunchPermissions"]
        assert {"UserId": PARTNER} in perms and {"OrganizationArn": ORG} in perms and {"OrganizationalUnitArn": OU} in perms
        assert {"Group": "all"} not in perms  # never public
    home_perms = local(HOME).ec2().describe_image_attribute(ImageId=ami, Attribute="launchPermission")["LaunchPermissions"]
    assert {"UserId": PARTNER} in home_perms


def test_a_second_run_finds_every_copy_and_changes_nothing(account):
    spec, config, local, dist = setup(account)
    ami = bake(local(HOME))
    first = run(local, spec, ami, dist)
    calls: list[str] = []
    for region in (HOME, WEST, EU):
        local(region).ec2().meta.events.register("before-call", lambda model, **_: calls.append(model.name))
    second = run(local, spec, ami, dist)
    assert second.ami_by_region() == first.ami_by_region()
    assert [c.status for c in second.copies] == ["source", "found", "found"]
    assert not [c for c in calls if not c.startswith("Describe")], calls  # reads only
    for region in (WEST, EU):
        assert len(copies_of(local(region), ami)) == 1


def test_a_failed_copyimage_is_ridden_out_by_the_next_run(account):
    spec, config, local, dist = setup(account)
    ami = bake(local(HOME))
    faults.arm(account["moto"].endpoint, faults.Fault("ec2:CopyImage", "error", times=1))
    first = run(local, spec, ami, dist)
    failed = [c for c in first.copies if c.error]
    assert len(failed) == 1 and "InjectedFault" in failed[0].error and failed[0].ami_id is None
    assert not copies_of(local(failed[0].region), ami)  # nothing half-made
    second = run(local, spec, ami, dist)
    assert second.ok and set(second.ami_by_region()) == {HOME, WEST, EU}


def test_a_throttled_copyimage_is_retried_and_makes_one_copy(account):
    spec, config, local, dist = setup(account)
    ami = bake(local(HOME))
    faults.arm(account["moto"].endpoint, faults.Fault("ec2:CopyImage", "throttle", times=2))
    result = run(local, spec, ami, dist)
    assert result.ok, result.errors
    for region in (WEST, EU):
        assert len(copies_of(local(region), ami)) == 1


def test_a_copy_that_fails_is_deregistered_with_its_snapshots(account):
    spec, config, local, dist = setup(account)
    ami = bake(local(HOME))
    faults.arm(account["moto"].endpoint, faults.Fault("ec2:CopyImage", "broken", times=1))
    first = run(local, spec, ami, dist)
    failed = [c for c in first.copies if c.error]
    assert len(failed) == 1 and "is failed" in failed[0].error and "deregistered the failed copy" in failed[0].error
    region = failed[0].region
    assert not copies_of(local(region), ami)
    leftover = local(region).ec2().describe_snapshots(OwnerIds=["self"], Filters=[{"Name": f"tag:{COPY_OF_TAG}", "Values": [ami]}])["Snapshots"]
    assert not leftover
    second = run(local, spec, ami, dist)
    assert second.ok and len(copies_of(local(region), ami)) == 1


def test_a_failed_share_is_finished_by_the_next_run(account):
    spec, config, local, dist = setup(account)
    ami = bake(local(HOME))
    faults.arm(account["moto"].endpoint, faults.Fault("ec2:ModifyImageAttribute", "error", times=2))
    first = run(local, spec, ami, dist)
    assert not first.ok
    second = run(local, spec, ami, dist)
    assert second.ok
    for region, image in second.ami_by_region().items():
        perms = local(region).ec2().describe_image_attribute(ImageId=image, Attribute="launchPermission")["LaunchPermissions"]
        assert {"UserId": PARTNER} in perms, region
        if region != HOME:
            assert len(copies_of(local(region), ami)) == 1


def test_a_dead_runs_pending_copy_is_waited_for_not_copied_again(account):
    """A run killed after CopyImage answered: the next finds the copy by its tags and waits."""
    spec, config, local, dist = setup(account)
    ami = bake(local(HOME))
    from factory.distribute import copies

    source = local(HOME).ec2().describe_images(ImageIds=[ami])["Images"][0]
    key = local(WEST).client("kms").describe_key(KeyId="alias/factory-ami")["KeyMetadata"]["Arn"]
    started = copies.start_copy(local(WEST).ec2(), source, HOME, key, "dead-run-token", {})
    result = run(local, spec, ami, dist)
    assert result.ok and result.ami_by_region()[WEST] == started
    assert [c.status for c in result.copies if c.region == WEST] == ["found"]


def test_a_region_key_that_is_not_there_is_refused_before_any_copy(account):
    spec, config, local, dist = setup(account)
    from dataclasses import replace

    from factory.errors import FactoryError

    ami = bake(local(HOME))
    missing = replace(dist, kms_keys=tuple((r, "alias/nope" if r == EU else k) for r, k in dist.kms_keys))
    with pytest.raises(FactoryError) as err:
        run(local, spec, ami, missing)
    assert "distribute.kms_keys.eu-west-1: alias/nope is not a KMS key in eu-west-1" in err.value.message
    assert not copies_of(local(WEST), ami) and not copies_of(local(EU), ami)


def test_the_cli_distributes_the_tasks_newest_ami(account, cli):
    clients = Clients(HOME, account["moto"].endpoint)
    ami = bake(clients)
    env = {"AWS_ENDPOINT_URL": account["moto"].endpoint, "COLUMNS": "250"}
    # the command's own copy fails: it is removed, counted, and the command fails saying so
    faults.arm(account["moto"].endpoint, faults.Fault("ec2:CopyImage", "broken", times=1, caller="command:distribute"))
    failed = cli("distribute", TASK, "--ami", ami, "--specs-dir", account["specs"], "--config", account["config"], env=env)
    assert failed.exit_code == 1 and "deregistered the failed copy" in failed.stderr and "run the same command again" in failed.stderr
    r = cli("distribute", TASK, "--ami", ami, "--specs-dir", account["specs"], "--config", account["config"], "--json", env=env)
    assert r.exit_code == 0, r.stderr
    [result] = json.loads(r.stdout)
    assert result["source_ami"] == ami and {c["region"] for c in result["copies"]} == {HOME, WEST, EU}
    # without --ami: the task's newest AMI, as prune and register order them (CreationDate has whole seconds, then the id)
    mine = clients.ec2().describe_images(Owners=["self"], Filters=[{"Name": "tag:factory:task", "Values": [TASK]}])["Images"]
    newest = max(mine, key=lambda i: (i["CreationDate"], i["ImageId"]))["ImageId"]
    assert json.loads(cli("distribute", TASK, "--specs-dir", account["specs"], "--config", account["config"], "--json", env=env).stdout)[0]["source_ami"] == newest
    again = cli("distribute", TASK, "--specs-dir", account["specs"], "--config", account["config"], env=env)
    assert again.exit_code == 0 and "found" in again.stdout
    bad = cli("distribute", "--specs-dir", account["specs"], env=env)
    assert bad.exit_code == 2 and "give a TASK or --all" in bad.stderr
    Path(account["folder"] / "public.yaml").write_text(CONFIG.replace(f'"{PARTNER}", ', '"all", '))
    public = cli("distribute", TASK, "--specs-dir", account["specs"], "--config", account["folder"] / "public.yaml", env=env)
    assert public.exit_code == 1 and "share_with[0]: `all` would make the AMI public" in public.stderr
    assert "Traceback" not in public.stderr


def test_no_cloud_is_needed_to_refuse_a_bad_distribution(tmp_path):
    """Cloud.register_config is what prepare checks before any instance starts."""
    (tmp_path / "factory.yaml").write_text(CONFIG.replace(f"{EU}: alias/factory-ami", f"{EU}: alias/aws/ebs"))
    cloud = Cloud("aws", config_path=tmp_path / "factory.yaml")
    from factory.config import ConfigError

    with pytest.raises(ConfigError) as err:
        cloud.register_config().distribution_for(load_spec(SPECS / f"{TASK}.yaml"))
    assert "distribute.kms_keys.eu-west-1: alias/aws/ebs is the AWS-managed key" in err.value.message


SECOND = "444455556666"
ROLE = f"arn:aws:iam::{SECOND}:role/factory-distribute"


def second_account(account):
    """The second account as register needs it (a key in each region, the instance role),
    made once per module; its clients_for through the role, and a factory.yaml copying there."""
    from factory.distribute.accounts import assumed

    theirs = assumed(Clients(HOME, account["moto"].endpoint), ROLE, SECOND)
    config = account["folder"] / "copy-to.yaml"
    if not config.exists():
        for region in (HOME, WEST, EU):
            kms = theirs(region).client("kms")
            kms.create_alias(AliasName="alias/factory-ami", TargetKeyId=kms.create_key()["KeyMetadata"]["KeyId"])
        iam = theirs(HOME).client("iam")  # what register needs there
        iam.create_service_linked_role(AWSServiceName="batch.amazonaws.com")
        iam.create_role(RoleName="ecsInstanceRole", AssumeRolePolicyDocument="{}")
        iam.create_instance_profile(InstanceProfileName="ecsInstanceRole")
        iam.add_role_to_instance_profile(InstanceProfileName="ecsInstanceRole", RoleName="ecsInstanceRole")
        config.write_text(CONFIG + f'  copy_to:\n    - {{account: "{SECOND}", role: "{ROLE}", register: true}}\n')
    return theirs, config


def test_copy_to_a_second_account_through_its_role(account, cli):
    """`copy_to`: the role assumed (moto maps the assumed keys to the role's account), the
    AMI of each region shared with that account and copied there with its own key."""
    endpoint = account["moto"].endpoint
    theirs, config = second_account(account)
    ami = bake(Clients(HOME, endpoint))
    env = {"AWS_ENDPOINT_URL": endpoint, "COLUMNS": "250"}
    r = cli("distribute", TASK, "--ami", ami, "--specs-dir", account["specs"], "--config", config, "--register", "--json", env=env)
    assert r.exit_code == 0, r.stderr
    [result] = json.loads(r.stdout)
    assert result["source_ami"] == ami
    assert {f"{SECOND}:{region}" for region in (HOME, WEST, EU)} <= set(result["registered"])
    there = {c["region"]: c["ami_id"] for c in result["copies"] if c["account"] == SECOND}
    assert set(there) == {HOME, WEST, EU}
    for region, image_id in there.items():
        assert theirs(region).ssm().get_parameter(Name=f"/factory/{TASK}/ami-id")["Parameter"]["Value"] == image_id  # registered there
        image = theirs(region).ec2().describe_images(ImageIds=[image_id])["Images"][0]
        assert image["OwnerId"] == SECOND and resource_tags(image)["factory:task"] == TASK
        snap = theirs(region).ec2().describe_snapshots(SnapshotIds=[image["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]])["Snapshots"][0]
        assert snap["KmsKeyId"] == theirs(region).client("kms").describe_key(KeyId="alias/factory-ami")["KeyMetadata"]["Arn"]
    ours = {c["region"]: c["ami_id"] for c in result["copies"] if not c["account"]}
    snap = Clients(WEST, endpoint).ec2().describe_images(ImageIds=[ours[WEST]])["Images"][0]["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    perms = Clients(WEST, endpoint).ec2().describe_snapshot_attribute(SnapshotId=snap, Attribute="createVolumePermission")
    assert {"UserId": SECOND} in perms["CreateVolumePermissions"]
    again = cli("distribute", TASK, "--ami", ami, "--specs-dir", account["specs"], "--config", config, "--json", env=env)
    assert again.exit_code == 0 and {c["ami_id"] for c in json.loads(again.stdout)[0]["copies"] if c["account"] == SECOND} == set(there.values())


def test_the_copies_are_registered_in_their_regions(account, cli):
    """`--register` (and a bake, through bake.registration): each target region gets the
    tier's launch template with the copy, its compute environment, queue and parameter."""
    endpoint = account["moto"].endpoint
    ami = bake(Clients(HOME, endpoint))
    env = {"AWS_ENDPOINT_URL": endpoint, "COLUMNS": "250"}
    r = cli("distribute", TASK, "--ami", ami, "--specs-dir", account["specs"], "--config", account["config"], "--register", "--json", env=env)
    assert r.exit_code == 0, r.stderr
    [result] = json.loads(r.stdout)
    copies = {c["region"]: c["ami_id"] for c in result["copies"]}
    assert set(result["registered"]) == {WEST, EU}
    for region in (WEST, EU):
        clients = Clients(region, endpoint)
        name = f"/factory/{TASK}/ami-id"
        assert clients.ssm().get_parameter(Name=name)["Parameter"]["Value"] == copies[region]
        queues = clients.batch().describe_job_queues()["jobQueues"]
        assert [q["jobQueueName"] for q in queues] == [f"factory-{TASK}"]
        template = clients.ec2().describe_launch_template_versions(LaunchTemplateName=f"factory-{TASK}", Versions=["$Default"])
        assert template["LaunchTemplateVersions"][0]["LaunchTemplateData"]["ImageId"] == copies[region]
    # status covers every region: each copy judged against what the home region runs
    assert cli("register", TASK, "--ami", ami, "--specs-dir", account["specs"], "--config", account["config"], env=env).exit_code == 0
    status = cli("status", TASK, "--specs-dir", account["specs"], "--config", account["config"], "--json", env=env)
    rows = {t["region"]: t for t in json.loads(status.stdout)["tasks"]}
    assert set(rows) == {HOME, WEST, EU}
    for region in (WEST, EU):
        assert rows[region]["ami_in_use"] == copies[region] and rows[region]["reasons"] == [], rows[region]
    newer = bake(Clients(HOME, endpoint))  # home rolls on; the copies are now behind
    assert cli("register", TASK, "--specs-dir", account["specs"], "--config", account["config"], "--ami", newer, env=env).exit_code == 0
    status = cli("status", TASK, "--specs-dir", account["specs"], "--config", account["config"], "--json", env=env)
    rows = {t["region"]: t for t in json.loads(status.stdout)["tasks"]}
    assert any(f"but {HOME} runs {newer}: run `factory distribute {TASK} --register`" in r for r in rows[WEST]["reasons"]), rows[WEST]
    # rollback covers every region: each goes back to its copy of the AMI home goes back to
    rolled = cli("rollback", TASK, "--specs-dir", account["specs"], "--config", account["config"], "--json", env=env)
    assert rolled.exit_code == 0, rolled.stderr
    done = json.loads(rolled.stdout)
    assert done["to"] == copies[HOME] and set(done["regions"]) == {WEST, EU}
    for region in (WEST, EU):
        template = Clients(region, endpoint).ec2().describe_launch_template_versions(LaunchTemplateName=f"factory-{TASK}", Versions=["$Default"])
        assert template["LaunchTemplateVersions"][0]["LaunchTemplateData"]["ImageId"] == copies[region]
    # plan covers every region: nothing to do anywhere; with an AMI not copied yet, it says so
    plan = json.loads(cli("plan", TASK, "--specs-dir", account["specs"], "--config", account["config"], "--json", env=env).stdout)
    assert plan["status"] == "unchanged" and {r: p["status"] for r, p in plan["regions"].items()} == {WEST: "unchanged", EU: "unchanged"}
    ahead = cli("plan", TASK, "--specs-dir", account["specs"], "--config", account["config"], "--ami", newer, "--json", env=env)
    assert json.loads(ahead.stdout)["regions"][WEST].startswith(f"would copy {TASK} ({newer}) to {WEST} first")


def their_template_ami(theirs, region: str) -> str:
    versions = theirs(region).ec2().describe_launch_template_versions(LaunchTemplateName=f"factory-{TASK}", Versions=["$Default"])
    return versions["LaunchTemplateVersions"][0]["LaunchTemplateData"]["ImageId"]


def test_plan_status_prune_rollback_cover_the_copy_to_account(account, cli):
    """A copy_to account with `register: true` is covered as a region of ours: plan and
    status read it through its role, rollback takes each of its regions back to its copy of
    the AMI we go back to, prune deletes there what is old and keeps what its launch
    templates use, and retires none of the tiers register made there."""
    endpoint = account["moto"].endpoint
    theirs, config = second_account(account)
    env = {"AWS_ENDPOINT_URL": endpoint, "COLUMNS": "250"}
    args = ("--specs-dir", account["specs"], "--config", config)
    old = bake(Clients(HOME, endpoint))  # copied there, never run: prune's to delete
    assert cli("distribute", TASK, "--ami", old, *args, env=env).exit_code == 0
    first, second = bake(Clients(HOME, endpoint)), None
    for ami in (first, second := bake(Clients(HOME, endpoint))):
        assert cli("register", TASK, "--ami", ami, *args, env=env).exit_code == 0
        r = cli("distribute", TASK, "--ami", ami, "--register", *args, "--json", env=env)
        assert r.exit_code == 0, r.stderr
    copies = {(c["account"], c["region"]): c["ami_id"] for c in json.loads(r.stdout)[0]["copies"]}
    labels = {f"{SECOND}:{region}" for region in (HOME, WEST, EU)}

    status = json.loads(cli("status", TASK, *args, "--json", env=env).stdout)
    rows = {(t["account"], t["region"]): t for t in status["tasks"]}
    assert {(SECOND, region) for region in (HOME, WEST, EU)} <= set(rows)
    for region in (HOME, WEST, EU):
        row = rows[(SECOND, region)]
        assert row["ami_in_use"] == copies[(SECOND, region)] and row["reasons"] == [], row
    text = cli("status", TASK, *args, env=env).stdout
    assert f"{TASK} ({SECOND}:{EU})" in text

    plan = json.loads(cli("plan", TASK, "--ami", second, *args, "--json", env=env).stdout)  # AMIs of one second: name the one meant
    assert {r: p["status"] for r, p in plan["regions"].items() if r in labels} == dict.fromkeys(labels, "unchanged"), plan["regions"]

    # home goes back to `first`: every region of the second account to its copy of our AMI there
    rolled = cli("rollback", TASK, *args, "--json", env=env)
    assert rolled.exit_code == 0, rolled.stderr
    done = json.loads(rolled.stdout)
    assert done["to"] == first and labels <= set(done["regions"])
    ours = {region: first if region == HOME else copies_of(Clients(region, endpoint), first)[0]["ImageId"] for region in (HOME, WEST, EU)}
    for region in (HOME, WEST, EU):
        [back] = copies_of(theirs(region), ours[region])
        assert their_template_ami(theirs, region) == back["ImageId"]
    status = json.loads(cli("status", TASK, *args, "--json", env=env).stdout)
    assert all(not t["reasons"] for t in status["tasks"] if t["account"] == SECOND), status
    # a region of theirs left behind is stale, naming the fix
    assert cli("register", TASK, "--ami", second, *args, env=env).exit_code == 0
    status = json.loads(cli("status", TASK, *args, "--json", env=env).stdout)
    behind = next(t for t in status["tasks"] if (t["account"], t["region"]) == (SECOND, HOME))
    assert any(f"but this account runs {second} there: run `factory distribute {TASK} --register`" in r for r in behind["reasons"])

    [stale] = copies_of(theirs(HOME), old)
    pruned = cli("prune", "--keep", "1", "--apply", *args, "--json", env=env)
    assert pruned.exit_code == 0, pruned.stderr
    done = json.loads(pruned.stdout)
    assert labels <= set(done)
    amis = {c["name"]: c["action"] for c in done[f"{SECOND}:{HOME}"]["changes"] if c["resource"] == "ami"}
    assert amis.get(stale["ImageId"]) == "delete" and not theirs(HOME).ec2().describe_images(ImageIds=[stale["ImageId"]])["Images"]
    assert not any(c["action"] == "delete" and c["resource"] != "ami" and "version" not in c["reason"]
                   for c in done[f"{SECOND}:{HOME}"]["changes"]), done[f"{SECOND}:{HOME}"]  # no tier retired there
    for region in (HOME, WEST, EU):  # what their launch templates run is kept
        assert theirs(region).ec2().describe_images(ImageIds=[their_template_ami(theirs, region)])["Images"]
        assert [q["jobQueueName"] for q in theirs(region).batch().describe_job_queues()["jobQueues"]] == [f"factory-{TASK}"]


def delete_default_vpc(ec2) -> None:
    """A region as an account whose default VPC was deleted has it: its subnets and gateway first."""
    [vpc] = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
    for subnet in ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc["VpcId"]]}])["Subnets"]:
        ec2.delete_subnet(SubnetId=subnet["SubnetId"])
    for gateway in ec2.describe_internet_gateways(Filters=[{"Name": "attachment.vpc-id", "Values": [vpc["VpcId"]]}])["InternetGateways"]:
        ec2.detach_internet_gateway(InternetGatewayId=gateway["InternetGatewayId"], VpcId=vpc["VpcId"])
        ec2.delete_internet_gateway(InternetGatewayId=gateway["InternetGatewayId"])
    ec2.delete_vpc(VpcId=vpc["VpcId"])


def test_a_target_region_without_a_default_vpc_needs_a_named_network(account, cli):
    """A region the copies are registered in with no default VPC and no named network is
    refused before any copy; named in distribute.networks, its compute environment runs there."""
    endpoint = account["moto"].endpoint
    south = "ap-southeast-2"
    ec2 = Clients(south, endpoint).ec2()
    delete_default_vpc(ec2)
    kms = Clients(south, endpoint).client("kms")
    kms.create_alias(AliasName="alias/factory-ami", TargetKeyId=kms.create_key()["KeyMetadata"]["KeyId"])
    config = account["folder"] / "south.yaml"
    settings = f"builder: {{kms_key: alias/factory-ami}}\ndistribute:\n  regions: [{south}]\n  kms_keys: {{{south}: alias/factory-ami}}\n"
    config.write_text(settings)
    ami = bake(Clients(HOME, endpoint))
    env = {"AWS_ENDPOINT_URL": endpoint, "COLUMNS": "250"}
    refused = cli("distribute", TASK, "--ami", ami, "--register", "--specs-dir", account["specs"], "--config", config, env=env)
    assert refused.exit_code == 1 and "Traceback" not in refused.stderr
    assert f"{config}: distribute.networks: {south} has no default VPC and distribute.networks names no network there" in refused.stderr
    assert not copies_of(Clients(south, endpoint), ami)  # refused before any copy
    own = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=own, CidrBlock="10.9.1.0/24")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(VpcId=own, GroupName="factory-batch", Description="factory batch")["GroupId"]
    config.write_text(settings + f"  networks: {{{south}: {{subnets: [{subnet}], security_groups: [{group}]}}}}\n")
    r = cli("distribute", TASK, "--ami", ami, "--register", "--specs-dir", account["specs"], "--config", config, "--json", env=env)
    assert r.exit_code == 0, r.stderr
    [ce] = Clients(south, endpoint).batch().describe_compute_environments()["computeEnvironments"]
    assert ce["computeResources"]["subnets"] == [subnet] and ce["computeResources"]["securityGroupIds"] == [group]


def test_a_copy_to_account_registers_in_the_network_its_entry_names(account, cli):
    """copy_to[].networks: that account's compute environment in a region runs in the
    subnets and security groups named for it there (ids of that account)."""
    endpoint = account["moto"].endpoint
    theirs, _ = second_account(account)
    ec2 = theirs(EU).ec2()
    vpc = ec2.create_vpc(CidrBlock="10.8.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.8.1.0/24")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(VpcId=vpc, GroupName="factory-batch", Description="factory batch")["GroupId"]
    config = account["folder"] / "copy-to-network.yaml"
    config.write_text(CONFIG + f'  copy_to:\n    - {{account: "{SECOND}", role: "{ROLE}", register: true, '
                      f'networks: {{{EU}: {{subnets: [{subnet}], security_groups: [{group}]}}}}}}\n')
    ami = bake(Clients(HOME, endpoint))
    env = {"AWS_ENDPOINT_URL": endpoint, "COLUMNS": "250"}
    r = cli("distribute", TASK, "--ami", ami, "--register", "--specs-dir", account["specs"], "--config", config, env=env)
    assert r.exit_code == 0, r.stderr
    there = {c["computeEnvironmentName"]: c for c in theirs(EU).batch().describe_compute_environments()["computeEnvironments"]}
    [ce] = [c for c in there.values() if c["state"] == "ENABLED" and c["computeResources"]["subnets"] == [subnet]]
    assert ce["computeResources"]["securityGroupIds"] == [group]
    home_there = theirs(HOME).batch().describe_compute_environments()["computeEnvironments"]
    assert all(c["computeResources"]["subnets"] != [subnet] for c in home_there)  # its other regions: their default VPC
    # without a default VPC there (the last test of the module to use the second account) and no network named: refused first
    delete_default_vpc(theirs(WEST).ec2())
    newer = bake(Clients(HOME, endpoint))
    refused = cli("distribute", TASK, "--ami", newer, "--register", "--specs-dir", account["specs"], "--config", config, env=env)
    assert refused.exit_code == 1 and "Traceback" not in refused.stderr
    assert (f"{config}: distribute.copy_to[0].networks: account {SECOND} has no default VPC in {WEST} and copy_to[0] names no "
            "network there") in refused.stderr, refused.stderr
    assert not copies_of(Clients(WEST, endpoint), newer)  # before any copy


def test_prune_keeps_a_source_a_copy_is_still_made_from(tmp_path, cli, monkeypatch):
    """A local cloud whose copies stay pending: prune (every region a spec is baked in or
    distributed to, and the copy_to account through its role) deregisters an old AMI of the
    task, but not one a copy is made from, in another region or in the other account."""
    from factory.distribute.accounts import assumed
    from factory.local.aws.moto_server import MotoServer

    server = MotoServer.start(copy_delay=3600)
    try:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        home, west = Clients(HOME, server.endpoint), Clients(WEST, server.endpoint)
        theirs = assumed(home, ROLE, SECOND)
        for kms in (west.client("kms"), theirs(HOME).client("kms")):
            kms.create_alias(AliasName="alias/factory-ami", TargetKeyId=kms.create_key()["KeyMetadata"]["KeyId"])
        made = [bake(home) for _ in range(5)]
        # --keep 2 keeps the newest two as prune orders them (CreationDate has whole seconds, then the id)
        images = sorted(home.ec2().describe_images(ImageIds=made)["Images"], key=lambda i: (i["CreationDate"], i["ImageId"]), reverse=True)
        *newest, copied, copied_there, plain = [i["ImageId"] for i in images]
        from factory.distribute import copies

        def start(clients, ami, cross_account=False):
            source = home.ec2().describe_images(ImageIds=[ami])["Images"][0]
            if cross_account:  # shared with the account, as distribution shares it (sharing.share_image, share_snapshots)
                home.ec2().modify_image_attribute(ImageId=ami, LaunchPermission={"Add": [{"UserId": SECOND}]})
                home.ec2().modify_snapshot_attribute(SnapshotId=source["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"],
                                                     Attribute="createVolumePermission", OperationType="add", UserIds=[SECOND])
            key = clients.client("kms").describe_key(KeyId="alias/factory-ami")["KeyMetadata"]["Arn"]
            return copies.start_copy(clients.ec2(), source, HOME, key, f"prune-test-{ami}", {}, cross_account=cross_account)

        pending, pending_there = start(west, copied), start(theirs(HOME), copied_there, cross_account=True)
        specs = tmp_path / "specs"
        specs.mkdir()
        shutil.copy(SPECS / f"{TASK}.yaml", specs)
        shutil.copytree(SPECS / "benchmarks", specs / "benchmarks")
        config = tmp_path / "factory.yaml"
        config.write_text(f"builder: {{kms_key: alias/factory-ami}}\ndistribute: {{regions: [{WEST}], kms_keys: {{{WEST}: alias/factory-ami}}, "
                          f'copy_to: [{{account: "{SECOND}", role: "{ROLE}"}}]}}\n')
        env = {"AWS_ENDPOINT_URL": server.endpoint, "COLUMNS": "250"}
        r = cli("prune", "--keep", "2", "--apply", "--specs-dir", specs, "--config", config, "--json", env=env)
        assert r.exit_code == 0, r.stderr
        done = json.loads(r.stdout)
        assert set(done) == {HOME, WEST, f"{SECOND}:{HOME}", f"{SECOND}:{WEST}"}
        actions = {c["name"]: c["action"] for c in done[HOME]["changes"] if c["resource"] == "ami"}
        assert actions[plain] == "delete" and actions[copied] == actions[copied_there] == "unchanged"
        reasons = {c["name"]: c["reason"] for c in done[HOME]["changes"]}
        assert reasons[copied] == f"task {TASK}: a copy is still being made from it ({WEST} {pending})"
        assert reasons[copied_there] == f"task {TASK}: a copy is still being made from it ({HOME} {pending_there})"
        assert home.ec2().describe_images(ImageIds=[copied, copied_there])["Images"]
        assert set(newest) <= {i["ImageId"] for i in home.ec2().describe_images(Owners=["self"])["Images"]}
        # the other account's pending copy is never touched (a copy being made), nor any of its tiers (register: false)
        assert theirs(HOME).ec2().describe_images(ImageIds=[pending_there])["Images"][0]["State"] == "pending"
    finally:
        server.stop()
