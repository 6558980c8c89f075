"""Running jobs come first: prune and blue/green never delete a queue or an environment a
live job still needs (factory.register.live_jobs; docs/register.md, "Running jobs are never
killed").

Real jobs: the local cloud runs each one in a container on a real Docker engine, in AWS's
job states, and applies AWS's rules to them (deleting a queue fails its jobs; deleting an
environment fails the jobs on it: docs/local-cloud.md, "Batch jobs"). So a test that
deletes too early sees its job FAILED, not only a call it did not expect.
"""

from __future__ import annotations

import time

import pytest
from docker_fixtures import IMAGE, requires_docker

from factory.local.aws import submit
from factory.local.aws.moto_server import MotoServer
from factory.register import prune
from factory.register.live_jobs import TAG_RETIRED
from factory.register.waits import Waiter
from factory.spec import load_specs
from factory.tiers import tiers_for
from tests.conftest import SPECS
from tests.test_register import REGION, Cloud, bake_all, open_account, run, with_batch

pytestmark = requires_docker
TASK = "star-align"


@pytest.fixture(scope="module")
def server(docker_engine):
    s = MotoServer.start(docker_host=docker_engine.host or "unix:///var/run/docker.sock")
    yield s
    s.stop()


@pytest.fixture
def cloud(server, monkeypatch):
    """test_register's account, on a server whose jobs run on the Docker engine."""
    return open_account(server, monkeypatch)


@pytest.fixture(scope="module")
def specs():
    return load_specs([SPECS])


def running_job(cloud: Cloud, queue: str, name: str = "pipeline-step") -> str:
    job = submit.submit(cloud.clients, queue, IMAGE, ["sleep", "300"], name=name)
    assert submit.wait(cloud.clients, job, {"RUNNING"}, timeout=60)["status"] == "RUNNING"
    return job


def status_of(cloud: Cloud, job: str) -> str:
    return submit.describe(cloud.clients, job)["status"]


def end(cloud: Cloud, job: str) -> None:
    cloud.batch.terminate_job(jobId=job, reason="the pipeline step is done")
    assert submit.wait(cloud.clients, job, timeout=60)["status"] == "FAILED"


def draining(cloud: Cloud, specs) -> list[str]:
    """What `factory status` lists as draining (StatusReport.draining)."""
    from factory.cloud import Cloud as Where
    from factory.status import task_status

    return task_status(specs, specs, Where("aws", _clients={REGION: cloud.clients})).draining


def retire_plan(specs):
    kept = [s for s in specs if s.name != TASK]
    return {t.name for t in tiers_for(kept, None)[0]}, {s.name for s in kept}


def test_prune_drains_a_retired_tier_whose_queue_runs_a_job_and_retires_it_once_the_job_ends(cloud, specs):
    bake_all(cloud, specs)
    name = f"factory-{run(cloud, specs).for_task(TASK).tier}"
    job = running_job(cloud, name)
    in_use, tasks = retire_plan(specs)

    plan = prune(cloud.clients, keep=3, dry_run=True, tiers_in_use=in_use, tasks_in_use=tasks)
    (drain,) = [c for c in plan.changes if c.name == name and c.resource == "job-queue"]
    assert drain.action == "drain" and job in drain.reason and "RUNNING" in drain.reason
    assert not [c for c in plan.changes if c.name == name and c.action == "delete"]  # nothing of the tier goes

    result = prune(cloud.clients, keep=3, dry_run=False, tiers_in_use=in_use, waiter=Waiter(60, 0.05), tasks_in_use=tasks)
    assert [c.action for c in result.changes if c.name == name] == ["drain"]
    time.sleep(1.5)  # past the local cloud's UPDATING and the job rules' next step
    assert cloud.queues()[name]["state"] == "DISABLED"  # no new jobs ...
    assert cloud.ces()[name]["state"] == "ENABLED"  # ... and its environment and template stay
    assert cloud.ec2.describe_launch_templates(Filters=[{"Name": "launch-template-name", "Values": [name]}])["LaunchTemplates"]
    assert cloud.clients.ssm().get_parameter(Name=f"/factory/{TASK}/ami-id")["Parameter"]["Value"]
    assert status_of(cloud, job) == "RUNNING"  # ... and the job runs on
    kept = [s for s in specs if s.name != TASK]
    assert [line for line in draining(cloud, kept) if f"job queue {name} " in line and "draining" in line]

    end(cloud, job)
    result = prune(cloud.clients, keep=3, dry_run=False, tiers_in_use=in_use, waiter=Waiter(60, 0.05), tasks_in_use=tasks)
    assert {(c.resource, c.action) for c in result.changes if c.name == name} == {
        ("job-queue", "delete"), ("compute-environment", "delete"), ("launch-template", "delete")}
    time.sleep(1.5)
    assert name not in cloud.queues() and name not in cloud.ces()


def test_prune_force_retires_the_tier_now_and_names_the_jobs_aws_terminates(cloud, specs):
    bake_all(cloud, specs)
    name = f"factory-{run(cloud, specs).for_task(TASK).tier}"
    job = running_job(cloud, name)
    in_use, tasks = retire_plan(specs)
    result = prune(cloud.clients, keep=3, dry_run=False, tiers_in_use=in_use, waiter=Waiter(60, 0.05), tasks_in_use=tasks, force=True)
    (queue,) = [c for c in result.changes if c.name == name and c.resource == "job-queue"]
    assert queue.action == "delete" and "--force" in queue.reason and job in queue.reason
    assert submit.wait(cloud.clients, job, timeout=60)["status"] == "FAILED"  # as AWS does to a deleted queue's jobs


def test_a_replaced_environment_stays_disabled_and_detached_while_a_job_runs_on_it(cloud, specs):
    # BEST_FIT allows no in-place infrastructure update: a new AMI means blue/green.
    specs = [with_batch(s, allocation_strategy="BEST_FIT") if s.name == TASK else s for s in specs]
    bake_all(cloud, specs)
    first = run(cloud, specs)
    name = f"factory-{first.for_task(TASK).tier}"
    job = running_job(cloud, name)

    new_ami = cloud.bake(TASK)
    second = run(cloud, specs, ami_overrides={TASK: new_ami})
    tr = second.for_task(TASK)
    assert tr.compute_environment != name
    changes = {c.name: c for c in tr.changes if c.resource == "compute-environment"}
    assert changes[tr.compute_environment].action == "replace"
    assert changes[name].action == "drain" and job in changes[name].reason
    time.sleep(1.5)
    old = cloud.ces()[name]
    assert old["state"] == "DISABLED" and old["status"] == "VALID" and TAG_RETIRED in old["tags"]
    assert [o["computeEnvironment"] for o in cloud.queues()[name]["computeEnvironmentOrder"]] == [cloud.ces()[tr.compute_environment]["computeEnvironmentArn"]]
    assert status_of(cloud, job) == "RUNNING"
    assert [line for line in draining(cloud, specs) if f"compute environment {name} " in line and "DISABLED" in line]
    # A job submitted now runs on the new environment only, so it does not hold the old one.
    later = running_job(cloud, name, name="next-step")

    still = run(cloud, specs, ami_overrides={TASK: new_ami})
    assert [c.action for c in still.for_task(TASK).changes if c.name == name and c.resource == "compute-environment"] == ["drain"]
    end(cloud, job)
    done = run(cloud, specs, ami_overrides={TASK: new_ami})
    assert [c.action for c in done.for_task(TASK).changes if c.name == name and c.resource == "compute-environment"] == ["delete"]
    time.sleep(1.5)  # past the local cloud's DELETING
    assert draining(cloud, specs) == []
    assert status_of(cloud, later) == "RUNNING"
    end(cloud, later)
