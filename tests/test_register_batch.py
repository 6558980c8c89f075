"""register against AWS Batch's real behaviour (issue 22 §2, §17, §18), over the local cloud.

- an AMI roll keeps the environment UPDATING while old instances drain (for up to the
  update policy's timeout): register finishes, writes the parameter and says "rolling";
- Batch's fixed quotas (50 environments, 50 queues per region, 3 environments a queue):
  the local cloud refuses past them, and register chooses tiers within what is left;
- a first register of many tiers sends each step for every tier side by side and waits
  for all of them in one loop (seen in the call log, not timed).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest

from factory.errors import FactoryError
from factory.local.aws.moto_server import MotoServer
from factory.register import register_tasks
from factory.spec import load_specs
from tests.conftest import SPECS
from tests.test_register import Calls, bake_all, open_account, run

ROLLING = 600.0  # seconds the roll's UPDATING lasts: far longer than any wait of the test


@pytest.fixture
def cloud(moto, monkeypatch):
    """test_register's clean account, on this module's server."""
    return open_account(moto, monkeypatch)


@pytest.fixture(scope="module")
def specs():
    """The shipped specs on EBS without a GPU: the tier counts and caps below are theirs
    (the GPU spec's tier is registered in tests/test_gpu.py, star-align-nvme's in
    tests/test_local_run.py; each is a tier group of its own)."""
    return [s for s in load_specs([SPECS]) if s.image.accelerator == "none" and not s.storage.on_instance_store]


@pytest.fixture
def rolling_cloud(monkeypatch, tmp_path):
    """A local cloud of its own where an infrastructure update stays UPDATING for ROLLING s."""
    server = MotoServer.start(log_path=tmp_path / "moto.log", rolling_delay=ROLLING)
    try:
        yield open_account(server, monkeypatch)
    finally:
        server.stop()


def _ce(cloud, name: str) -> dict:
    return cloud.batch.describe_compute_environments(computeEnvironments=[name])["computeEnvironments"][0]


def _parameter(cloud, task: str) -> str:
    return cloud.clients.ssm().get_parameter(Name=f"/factory/{task}/ami-id")["Parameter"]["Value"]


# ---------------------------------------------------------------------------------------
# §2: an AMI roll


def test_an_ami_roll_finishes_while_old_instances_drain_and_is_not_updated_again(rolling_cloud, specs):
    cloud = rolling_cloud
    bake_all(cloud, specs)
    first = run(cloud, specs)
    tier = first.for_task("salmon-quant")
    name = tier.compute_environment
    assert _ce(cloud, name)["status"] == "VALID"  # a create is not a roll: it settles as usual

    # The roll: a new AMI, a new launch template version, an infrastructure update that AWS
    # keeps UPDATING while it replaces instances. A wait for VALID would time out (20 s here).
    time.sleep(1.1)  # AMI creation dates have one-second resolution
    new_ami = cloud.bake("salmon-quant")
    rolled = run(cloud, specs, ami_overrides={"salmon-quant": new_ami}, wait_timeout=20)
    ce = _ce(cloud, name)
    assert ce["status"] == "UPDATING"
    assert ce["computeResources"]["launchTemplate"]["version"] == "2"
    assert _parameter(cloud, "salmon-quant") == new_ami  # written now, not on a later run
    notes = rolled.for_task("salmon-quant").notes
    assert any("rolling: old instances drain for up to 2880 min" in n for n in notes), notes

    # Again while it is still UPDATING with what this run wants: nothing is sent.
    with Calls(cloud.clients, services=("ec2", "batch", "ssm")) as calls:
        again = run(cloud, specs, ami_overrides={"salmon-quant": new_ami}, wait_timeout=20)
    assert calls.mutating == []
    (change,) = [c for c in again.for_task("salmon-quant").changes if c.resource == "compute-environment"]
    assert change.action == "unchanged" and "UPDATING: rolling" in change.reason

    # A newer AMI while the roll goes on: AWS takes no update while UPDATING, so none is
    # sent, the plan says so, and the parameter keeps naming what the environment runs.
    time.sleep(1.1)
    newer = cloud.bake("salmon-quant")
    with Calls(cloud.clients, services=("ec2", "batch", "ssm")) as calls:
        deferred = run(cloud, specs, ami_overrides={"salmon-quant": newer}, wait_timeout=20)
    assert "UpdateComputeEnvironment" not in calls.mutating
    assert "PutParameter" not in calls.mutating
    changes = {(c.resource, c.action) for c in deferred.for_task("salmon-quant").changes}
    assert ("compute-environment", "deferred") in changes and ("ssm-parameter", "deferred") in changes
    (said,) = [c for c in deferred.for_task("salmon-quant").changes if c.resource == "compute-environment"]
    assert f"not sent: {name} is UPDATING" in said.reason and "again once it is VALID" in said.reason
    assert _parameter(cloud, "salmon-quant") == new_ami

    # A queue change (here its priority) while the environment is UPDATING: UpdateJobQueue
    # names the environment, which AWS (and the local cloud) takes only VALID, so it is not
    # sent either; the run says so instead of failing on the refusal.
    with Calls(cloud.clients, services=("ec2", "batch", "ssm")) as calls:
        later = run(cloud, specs, config=cloud.config(queue_priority=5), ami_overrides={"salmon-quant": new_ami}, wait_timeout=20)
    sent = {p["jobQueue"] for p in calls.of("UpdateJobQueue")}
    assert later.for_task("salmon-quant").job_queue not in sent and len(sent) == 2  # the other tiers' environments are VALID
    (queue,) = [c for c in later.for_task("salmon-quant").changes if c.resource == "job-queue"]
    assert queue.action == "deferred" and "priority 1 -> 5" in queue.reason and f"{name} is UPDATING" in queue.reason, queue
    assert cloud.queues()[later.for_task("salmon-quant").job_queue]["priority"] == 1


# ---------------------------------------------------------------------------------------
# §18: many tiers side by side


def test_a_first_register_creates_every_tiers_resources_side_by_side_and_waits_once(cloud, specs):
    """Every CreateComputeEnvironment before the first wait; every CreateJobQueue after the
    environments settled and before the queues' wait; one describe per poll round for all."""
    bake_all(cloud, specs)
    with Calls(cloud.clients) as calls:
        result = run(cloud, specs)
    tiers = len(result.tiers)
    assert tiers == 3
    ops = calls.ops
    ce_creates = [i for i, op in enumerate(ops) if op == "CreateComputeEnvironment"]
    q_creates = [i for i, op in enumerate(ops) if op == "CreateJobQueue"]
    lt_creates = [i for i, op in enumerate(ops) if op == "CreateLaunchTemplate"]
    assert len(ce_creates) == len(q_creates) == len(lt_creates) == tiers
    # launch templates, then every environment, then every queue: no tier waits for another's
    assert max(lt_creates) < min(ce_creates) and max(ce_creates) < min(q_creates)
    # Every describe of the environments between the creates and the queues names all the
    # tiers still pending in one call (one wait loop), never one environment per call while
    # others are pending.
    describes = [p for op, p in calls.params if op == "DescribeComputeEnvironments" and p.get("computeEnvironments")]
    assert describes, "register waited for the environments"
    assert len(describes[0]["computeEnvironments"]) == tiers
    queue_describes = [p for op, p in calls.params if op == "DescribeJobQueues" and p.get("jobQueues")]
    assert len(queue_describes[0]["jobQueues"]) == tiers


def test_side_by_side_calls_overlap_on_the_wire(cloud, specs):
    """The creates of the tiers are in flight together (not one after another): seen from
    botocore's events, the second CreateComputeEnvironment starts before the first answers."""
    import threading

    bake_all(cloud, specs)
    batch = cloud.batch
    lock = threading.Lock()
    in_flight = {"now": 0, "most": 0}

    def before(**_):
        with lock:
            in_flight["now"] += 1
            in_flight["most"] = max(in_flight["most"], in_flight["now"])
        time.sleep(0.2)  # the call is slow, as on AWS: a sequential run never overlaps

    def after(**_):
        with lock:
            in_flight["now"] -= 1

    batch.meta.events.register("before-call.batch.CreateComputeEnvironment", before)
    batch.meta.events.register("after-call.batch.CreateComputeEnvironment", after)
    try:
        run(cloud, specs)
    finally:
        batch.meta.events.unregister("before-call.batch.CreateComputeEnvironment", before)
        batch.meta.events.unregister("after-call.batch.CreateComputeEnvironment", after)
    assert in_flight["most"] >= 2


# ---------------------------------------------------------------------------------------
# §17: Batch's fixed quotas


def _fill(cloud, environments: int) -> None:
    """Compute environments that are not factory's (unmanaged ones: nothing to launch)."""
    for i in range(environments):
        cloud.batch.create_compute_environment(computeEnvironmentName=f"others-{i:02d}", type="UNMANAGED", serviceRole=cloud.slr)


def test_the_local_cloud_keeps_batchs_fixed_quotas(cloud):
    from botocore.exceptions import ClientError

    _fill(cloud, 50)
    with pytest.raises(ClientError, match=r"50 compute environments .*the most AWS Batch allows \(50, a quota that cannot be increased\)"):
        cloud.batch.create_compute_environment(computeEnvironmentName="one-too-many", type="UNMANAGED", serviceRole=cloud.slr)
    time.sleep(0.5)  # the environments are VALID (a queue takes only those)
    order = [{"order": i + 1, "computeEnvironment": f"others-{i:02d}"} for i in range(4)]
    with pytest.raises(ClientError, match=r"at most 3 compute environments \(computeEnvironmentOrder has 4\)"):
        cloud.batch.create_job_queue(jobQueueName="wide", state="ENABLED", priority=1, computeEnvironmentOrder=order)
    for i in range(50):
        cloud.batch.create_job_queue(jobQueueName=f"q-{i:02d}", state="ENABLED", priority=1, computeEnvironmentOrder=order[:1])
    with pytest.raises(ClientError, match=r"50 job queues .*the most AWS Batch allows"):
        cloud.batch.create_job_queue(jobQueueName="q-50", state="ENABLED", priority=1, computeEnvironmentOrder=order[:1])


def _specs_dir(specs, folder: Path) -> Path:
    """A folder of just `specs` (with the benchmarks they name): what the CLI reads here."""
    import shutil

    folder.mkdir(exist_ok=True)
    shutil.copytree(SPECS / "benchmarks", folder / "benchmarks", dirs_exist_ok=True)
    for spec in specs:
        shutil.copy(spec.path, folder / spec.path.name)
    return folder


def _nextflow_queues(cli, env, specs_dir) -> dict[str, str]:
    """Process -> queue, from the nextflow-config the CLI writes for the account (--check: each exists)."""
    import re

    r = cli("nextflow-config", "--check", "--specs-dir", specs_dir, env=env)
    assert r.exit_code == 0, r.stderr
    return dict(re.findall(r"withName: '([A-Z_]+)'\s*\{\s*queue = '([^']+)'", r.stdout))


def _prune_plan(cli, env, specs_dir) -> list[dict]:
    import json

    r = cli("prune", "--specs-dir", specs_dir, "--json", env=env)
    assert r.exit_code == 0, r.stderr
    return [c for region in json.loads(r.stdout).values() for c in region["changes"] if c["resource"] in ("job-queue", "compute-environment")]


def test_register_chooses_fewer_tiers_in_a_full_account_and_every_command_follows(cloud, specs, cli, tmp_path):
    """48 job queues of others leave room for two tiers; the specs want three. register
    chooses two on its own (the fewest GiB), records it, and nextflow-config, prune, status
    choose the same two; once the room is back, register splits them again and all follow."""
    from factory.cloud import Cloud as Where
    from factory.register.tier_choice import ROOM_PARAMETER
    from factory.status import task_status
    from factory.tiers import tiers_for

    assert len(tiers_for(specs)[0]) == 3
    specs_dir = _specs_dir(specs, tmp_path / "specs")  # the CLI's folder: these specs only
    bake_all(cloud, specs)
    _fill(cloud, 1)
    time.sleep(0.5)  # VALID: a queue takes only those
    for i in range(48):
        cloud.batch.create_job_queue(jobQueueName=f"others-{i:02d}", state="ENABLED", priority=1, computeEnvironmentOrder=[{"order": 1, "computeEnvironment": "others-00"}])
    env = {"AWS_ENDPOINT_URL": cloud.endpoint}

    plan = run(cloud, specs, dry_run=True)
    assert [t.tier for t in plan.tiers] == ["salmon-quant", "star-align"]
    assert any("SSM /factory/tiers/room would be set to 2" in n for n in plan.notes), plan.notes
    with pytest.raises(cloud.clients.ssm().exceptions.ParameterNotFound):
        cloud.clients.ssm().get_parameter(Name=ROOM_PARAMETER)  # a plan records nothing

    result = run(cloud, specs)
    assert {t.tier: t.tasks for t in result.tiers} == {"salmon-quant": ("salmon-quant",), "star-align": ("salmon-index", "star-align")}
    assert any("the specs make 3 tiers" in n and "register chose 2" in n for n in result.notes), result.notes
    assert cloud.clients.ssm().get_parameter(Name=ROOM_PARAMETER)["Parameter"]["Value"] == "2"
    assert len(cloud.queues()) == 50 and len([c for c in cloud.ces() if c.startswith("factory-")]) == 2

    # The others read the record, not the account's free room: the same two tiers.
    assert _nextflow_queues(cli, env, specs_dir) == {"SALMON_INDEX": "factory-star-align", "SALMON_QUANT": "factory-salmon-quant", "STAR_ALIGN": "factory-star-align"}
    assert _prune_plan(cli, env, specs_dir) == []
    status = task_status(specs, specs, Where("aws", _clients={"us-east-1": cloud.clients}))
    assert {t.task: t.tier for t in status.tasks} == {"salmon-index": "star-align", "salmon-quant": "salmon-quant", "star-align": "star-align"}
    with Calls(cloud.clients, services=("ec2", "batch", "ssm")) as calls:
        again = run(cloud, specs)
    assert calls.mutating == [] and [t.tier for t in again.tiers] == ["salmon-quant", "star-align"]

    # Another team frees room (the account's free room grows; nothing follows it but register).
    for i in range(10):
        cloud.batch.update_job_queue(jobQueue=f"others-{i:02d}", state="DISABLED")
    time.sleep(0.5)
    for i in range(10):
        cloud.batch.delete_job_queue(jobQueue=f"others-{i:02d}")
    assert _nextflow_queues(cli, env, specs_dir)["SALMON_INDEX"] == "factory-star-align"
    grown = run(cloud, specs)
    assert [t.tier for t in grown.tiers] == ["salmon-index", "salmon-quant", "star-align"]
    assert cloud.clients.ssm().get_parameter(Name=ROOM_PARAMETER)["Parameter"]["Value"] == "49"
    assert _nextflow_queues(cli, env, specs_dir) == {"SALMON_INDEX": "factory-salmon-index", "SALMON_QUANT": "factory-salmon-quant", "STAR_ALIGN": "factory-star-align"}
    assert _prune_plan(cli, env, specs_dir) == []  # the split kept star-align's name: nothing to retire


def test_register_refuses_before_creating_anything_when_not_even_one_tier_fits(cloud, specs):
    bake_all(cloud, specs)
    _fill(cloud, 1)
    time.sleep(0.5)
    for i in range(50):
        cloud.batch.create_job_queue(jobQueueName=f"others-{i:02d}", state="ENABLED", priority=1, computeEnvironmentOrder=[{"order": 1, "computeEnvironment": "others-00"}])
    with Calls(cloud.clients, services=("ec2", "batch", "ssm")) as calls:
        with pytest.raises(FactoryError) as refused:
            run(cloud, specs)
    message = str(refused.value)
    assert "us-east-1: the account can hold 0 tiers" in message and "1 environment and 50 queues" in message, message
    assert "delete compute environments and job queues the account no longer needs" in message
    assert calls.mutating == []


# ---------------------------------------------------------------------------------------
# §1: a tier's name (its queue's, which Nextflow configs hold) does not move


def test_a_larger_spec_joining_a_tier_does_not_rename_its_queue(cloud, specs):
    from factory.register import prune
    from factory.register.tier_choice import tiers_in_account
    from factory.tiers import tiers_for

    by_name = {s.name: s for s in specs}
    index, star = by_name["salmon-index"], by_name["star-align"]
    xl = dataclasses.replace(star, name="star-align-xl", storage=dataclasses.replace(star.storage, max_input_gib=1.2 * star.storage.max_input_gib))
    config = dataclasses.replace(cloud.config(), max_tiers=2)
    amis = bake_all(cloud, [index, star, xl])
    first = run(cloud, [index, star], config=config)
    assert [t.tier for t in first.tiers] == ["salmon-index", "star-align"]
    # Named after its largest task, star-align's tier would now be star-align-xl's: a new queue.
    assert [t.name for t in tiers_for([index, star, xl], 2)[0]] == ["salmon-index", "star-align-xl"]

    second = run(cloud, [index, star, xl], config=config)
    tier = second.for_task("star-align-xl")
    assert (tier.tier, tier.tasks, tier.job_queue) == ("star-align", ("star-align", "star-align-xl"), "factory-star-align")
    assert tier.ami_id == amis["star-align-xl"]  # the tier runs on its largest task's AMI, as before
    assert {q for q in cloud.queues() if q.startswith("factory-")} == {"factory-salmon-index", "factory-star-align"}
    # Every other command names it the same way: prune retires nothing.
    in_use = {t.name for t in tiers_in_account([index, star, xl], 2, lambda _region: cloud.clients)[0]}
    assert in_use == {"salmon-index", "star-align"}
    pruned = prune(cloud.clients, dry_run=True, tiers_in_use=in_use)
    assert [c for c in pruned.changes if c.resource in ("job-queue", "compute-environment")] == []


_ = register_tasks  # the entry point these tests drive (through tests.test_register.run)
