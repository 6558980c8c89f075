"""Batch jobs on the local cloud: real containers on a real Docker engine, in AWS's job states.

The server is the local cloud's own (`MotoServer`, our rules in it), talked to over HTTP
with boto3; each job is the busybox image (tests/docker_fixtures.py) running a shell
command. docs/local-cloud.md, "Batch jobs", has the rules these check and their sources.

For tests of other areas that need a live job (prune, replace, roll while a job runs):
`factory.local.aws.submit.submit(clients, queue, IMAGE, ["sleep", "30"])`, then
`submit.wait(clients, job, {"RUNNING"})`, with a server started with
`MotoServer.start(docker_host=docker_engine.host)`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from docker_fixtures import IMAGE, requires_docker

from factory.aws import Clients
from factory.errors import AwsError
from factory.local.aws import submit
from factory.local.aws.moto_server import MotoServer

pytestmark = requires_docker
REGION = "us-east-1"
FACTORY = str(Path(sys.executable).with_name("factory"))


@pytest.fixture(scope="module")
def server(docker_engine):
    s = MotoServer.start(state_delay=0.4, docker_host=docker_engine.host or "unix:///var/run/docker.sock")
    yield s
    s.stop()


@pytest.fixture
def aws(server, monkeypatch):
    server.reset()
    for var in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    return Clients(REGION, server.endpoint)


def wait_for(predicate, what: str, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while not (found := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return found


def make_queue(aws: Clients, name: str = "q", max_vcpus: int = 4) -> str:
    """A VALID, ENABLED compute environment (`name`-env) and queue `name`, as register leaves them."""
    ec2, iam, batch = aws.ec2(), aws.client("iam"), aws.batch()
    if not iam.list_instance_profiles()["InstanceProfiles"]:
        iam.create_role(RoleName="ecsInstanceRole", AssumeRolePolicyDocument="{}")
        iam.create_instance_profile(InstanceProfileName="ecsInstanceRole")
        ec2.create_launch_template(LaunchTemplateName="tpl", LaunchTemplateData={"ImageId": "ami-12345678"})
    profile = iam.list_instance_profiles()["InstanceProfiles"][0]["Arn"]
    batch.create_compute_environment(computeEnvironmentName=f"{name}-env", type="MANAGED", state="ENABLED", computeResources={
        "type": "EC2", "allocationStrategy": "BEST_FIT_PROGRESSIVE", "minvCpus": 0, "maxvCpus": max_vcpus,
        "instanceTypes": ["default_x86_64"], "instanceRole": profile,
        "subnets": [ec2.describe_subnets()["Subnets"][0]["SubnetId"]],
        "securityGroupIds": [ec2.describe_security_groups()["SecurityGroups"][0]["GroupId"]],
        "launchTemplate": {"launchTemplateName": "tpl", "version": "1"},
    })
    env_status = lambda: batch.describe_compute_environments(computeEnvironments=[f"{name}-env"])["computeEnvironments"][0]["status"]  # noqa: E731
    wait_for(lambda: env_status() == "VALID", f"{name}-env VALID")
    batch.create_job_queue(jobQueueName=name, state="ENABLED", priority=1, computeEnvironmentOrder=[{"order": 1, "computeEnvironment": f"{name}-env"}])
    wait_for(lambda: batch.describe_job_queues(jobQueues=[name])["jobQueues"][0]["status"] == "VALID", f"{name} VALID")
    return name


def statuses_until(aws: Clients, job: str, until=submit.DONE, timeout: float = 30.0) -> tuple[list[str], dict]:
    seen: list[str] = []
    last = submit.wait(aws, job, until, timeout=timeout, on_status=lambda j: seen.append(j["status"]))
    return seen, last


def containers(docker_engine) -> list[str]:
    out = subprocess.run(["docker", "ps", "-a", "--filter", "label=factory.local.batch-job", "--format", "{{.Names}}"],
                         env=docker_engine.env(), capture_output=True, text=True, check=True).stdout
    return out.split()


def test_a_job_goes_through_aws_states_to_succeeded_in_a_container_on_an_instance_of_the_environment(aws, docker_engine):
    queue = make_queue(aws)
    job = submit.submit(aws, queue, IMAGE, ["sh", "-c", "echo hello from $AWS_BATCH_JQ_NAME; sleep 1"])
    seen, done = statuses_until(aws, job)
    # Batch user guide, "Job states": no dependency, so no PENDING
    assert seen == ["SUBMITTED", "RUNNABLE", "STARTING", "RUNNING", "SUCCEEDED"], seen
    assert done["container"]["exitCode"] == 0 and "statusReason" not in done
    assert done["startedAt"] <= done["stoppedAt"]
    assert submit.log_lines(aws, done) == ["hello from q"]
    # it ran on an instance of the queue's environment, which Batch launched (default_x86_64: the m6i family)
    instance = done["container"]["containerInstanceArn"].rsplit("/", 1)[1]
    found = aws.ec2().describe_instances(InstanceIds=[instance])["Reservations"][0]["Instances"][0]
    assert found["InstanceType"].startswith("m6i.")
    assert {"Key": "aws:batch:compute-environment", "Value": "q-env"} in found["Tags"]
    assert containers(docker_engine) == []  # the container is removed once the job is done
    listed = aws.batch().list_jobs(jobQueue=queue, jobStatus="SUCCEEDED")["jobSummaryList"]
    assert [j["jobId"] for j in listed] == [job]


def test_a_non_zero_exit_fails_the_job_with_its_exit_code(aws):
    queue = make_queue(aws)
    job = submit.submit(aws, queue, IMAGE, ["sh", "-c", "echo broken >&2; exit 3"])
    seen, done = statuses_until(aws, job)
    assert seen[-2:] == ["RUNNING", "FAILED"]
    assert done["container"]["exitCode"] == 3
    assert done["statusReason"] == "Essential container in task exited"
    assert submit.log_lines(aws, done) == ["broken"]


def test_an_image_the_engine_lacks_fails_the_job_as_a_pull_error(aws):
    queue = make_queue(aws)
    seen, done = statuses_until(aws, submit.submit(aws, queue, "factory-no-such-image:0", ["true"]))
    assert seen[-2:] == ["STARTING", "FAILED"]
    assert done["statusReason"].startswith("CannotPullContainerError:")
    assert "startedAt" not in done  # it never started


def test_no_docker_engine_fails_the_job_naming_the_fix(monkeypatch):
    dead = MotoServer.start(state_delay=0.4, docker_host="unix:///run/factory-no-such-engine.sock")
    try:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        clients = Clients(REGION, dead.endpoint)
        done = submit.wait(clients, submit.submit(clients, make_queue(clients), IMAGE, ["true"]), timeout=30)
    finally:
        dead.stop()
    assert done["status"] == "FAILED"
    assert done["statusReason"].startswith("CannotStartContainerError: no Docker engine answers at unix:///run/factory-no-such-engine.sock")


def test_a_disabled_environment_keeps_jobs_runnable_and_running_jobs_running(aws, docker_engine):
    """ComputeEnvironmentDetail.state: DISABLED places no job; STARTING and RUNNING jobs go on."""
    batch = aws.batch()
    queue = make_queue(aws)
    running = submit.submit(aws, queue, IMAGE, ["sleep", "3"])
    submit.wait(aws, running, {"RUNNING"})
    batch.update_compute_environment(computeEnvironment="q-env", state="DISABLED")
    waiting = submit.submit(aws, queue, IMAGE, ["true"])
    time.sleep(1.5)
    assert submit.describe(aws, waiting)["status"] == "RUNNABLE"
    assert submit.wait(aws, running, timeout=15)["status"] == "SUCCEEDED"
    assert submit.describe(aws, waiting)["status"] == "RUNNABLE"
    wait_for(lambda: batch.describe_compute_environments(computeEnvironments=["q-env"])["computeEnvironments"][0]["status"] == "VALID", "VALID")
    batch.update_compute_environment(computeEnvironment="q-env", state="ENABLED")
    assert submit.wait(aws, waiting, timeout=15)["status"] == "SUCCEEDED"


def test_a_full_environment_keeps_the_next_job_runnable(aws):
    """maxvCpus taken: "jobs can remain in this state indefinitely when sufficient resources are unavailable"."""
    queue = make_queue(aws, max_vcpus=1)
    first = submit.submit(aws, queue, IMAGE, ["sleep", "2"])
    submit.wait(aws, first, {"RUNNING"})
    second = submit.submit(aws, queue, IMAGE, ["true"])
    time.sleep(1.0)
    assert submit.describe(aws, second)["status"] == "RUNNABLE"
    seen, done = statuses_until(aws, second)
    assert seen[-4:] == ["RUNNABLE", "STARTING", "RUNNING", "SUCCEEDED"]
    assert submit.describe(aws, first)["stoppedAt"] <= done["startedAt"]


def test_a_disabled_queue_takes_no_new_job_and_lets_its_jobs_finish(aws):
    """UpdateJobQueue state: DISABLED, "new jobs can't be added to the queue, but jobs already in the queue can finish"."""
    batch = aws.batch()
    queue = make_queue(aws)
    job = submit.submit(aws, queue, IMAGE, ["sleep", "2"])
    submit.wait(aws, job, {"RUNNING"})
    batch.update_job_queue(jobQueue=queue, state="DISABLED")
    with pytest.raises(AwsError, match="Job queue q is DISABLED"):
        submit.submit(aws, queue, IMAGE, ["true"])
    assert submit.wait(aws, job, timeout=15)["status"] == "SUCCEEDED"


def test_deleting_a_queue_terminates_its_jobs_running_and_runnable(aws, docker_engine):
    """DeleteJobQueue: "All jobs in the queue are eventually terminated"."""
    batch = aws.batch()
    queue = make_queue(aws, max_vcpus=1)
    running = submit.submit(aws, queue, IMAGE, ["sleep", "60"])
    submit.wait(aws, running, {"RUNNING"})
    runnable = submit.submit(aws, queue, IMAGE, ["true"])  # no room: stays RUNNABLE
    time.sleep(0.8)
    assert submit.describe(aws, runnable)["status"] == "RUNNABLE"
    assert len(containers(docker_engine)) == 1
    batch.update_job_queue(jobQueue=queue, state="DISABLED")
    queue_is = lambda: batch.describe_job_queues(jobQueues=[queue])["jobQueues"][0]  # noqa: E731
    wait_for(lambda: (queue_is()["state"], queue_is()["status"]) == ("DISABLED", "VALID"), "queue DISABLED and VALID")
    batch.delete_job_queue(jobQueue=queue)
    for job in (running, runnable):
        done = submit.wait(aws, job, timeout=15)
        assert done["status"] == "FAILED" and "Job queue q deleted" in done["statusReason"], done
    assert submit.describe(aws, running)["container"]["exitCode"] != 0
    wait_for(lambda: containers(docker_engine) == [], "the job's container removed")


def test_terminate_fails_a_running_job_and_cancel_leaves_it(aws):
    """TerminateJob fails STARTING/RUNNING jobs; CancelJob only those not started, and still succeeds."""
    batch = aws.batch()
    queue = make_queue(aws)
    job = submit.submit(aws, queue, IMAGE, ["sleep", "60"])
    submit.wait(aws, job, {"RUNNING"})
    batch.cancel_job(jobId=job, reason="not started yet?")
    time.sleep(0.5)
    assert submit.describe(aws, job)["status"] == "RUNNING"
    batch.terminate_job(jobId=job, reason="rehearsal over")
    done = submit.wait(aws, job, timeout=15)
    assert (done["status"], done["statusReason"]) == ("FAILED", "rehearsal over")


def test_factory_local_submit_on_a_running_local_cloud_and_down_removes_the_jobs_left(docker_engine, tmp_path):
    """`factory local up`, a queue, `factory local submit QUEUE --image IMAGE [--wait] -- CMD`, `factory local down`:
    the commands a user runs, as processes, with the Docker engine DOCKER_HOST names."""
    from factory.local import cloud

    state = tmp_path / ".factory"
    env = dict(docker_engine.env(), FACTORY_STATE_DIR=str(state))

    def factory(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([FACTORY, *args], capture_output=True, text=True, env=env, timeout=180, check=False)

    try:
        up = factory("local", "up", "--state-delay", "0.4")
        assert up.returncode == 0, up.stderr
        clients = cloud.running(state).setup_clients("us-east-1")
        make_queue(clients, "factory-demo")
        ok = factory("local", "submit", "factory-demo", "--image", IMAGE, "--wait", "--", "sh", "-c", "echo done")
        assert ok.returncode == 0, ok.stderr
        assert [line.split(": ")[1] for line in ok.stdout.splitlines() if line.startswith("job ")] == [
            "SUBMITTED", "RUNNABLE", "STARTING", "RUNNING", "SUCCEEDED"]
        assert "  | done" in ok.stdout
        failed = factory("local", "submit", "factory-demo", "--image", IMAGE, "--wait", "--json", "--", "sh", "-c", "exit 4")
        assert failed.returncode == 1
        job = json.loads(failed.stdout)
        assert (job["status"], job["container"]["exitCode"]) == ("FAILED", 4)
        assert "Essential container in task exited" in failed.stderr
        started = factory("local", "submit", "factory-demo", "--image", IMAGE, "--", "sleep", "60")
        assert started.returncode == 0 and started.stdout.startswith("submitted job ")
        job_id = started.stdout.split()[2]
        assert submit.wait(clients, job_id, {"RUNNING"})["status"] == "RUNNING"
        assert len(containers(docker_engine)) == 1
        missing = factory("local", "submit", "no-such-queue", "--image", IMAGE, "--", "true")
        assert missing.returncode == 2 and "no job queue no-such-queue" in missing.stderr and "Traceback" not in missing.stderr
        no_command = factory("local", "submit", "factory-demo", "--image", IMAGE)
        assert no_command.returncode == 2 and "give the job's command after `--`" in no_command.stderr
    finally:
        down = factory("local", "down")
    assert down.returncode == 0, down.stderr
    assert containers(docker_engine) == []  # the running job's container went with the local cloud


def test_deleting_an_environment_ends_the_jobs_still_running_on_its_instance(aws):
    """DeleteComputeEnvironment: DISABLED and out of every queue first; its instances go, and the jobs on them."""
    batch = aws.batch()
    queue = make_queue(aws)
    make_queue(aws, "other")
    job = submit.submit(aws, queue, IMAGE, ["sleep", "60"])
    instance = submit.wait(aws, job, {"RUNNING"})["container"]["containerInstanceArn"].rsplit("/", 1)[1]
    other = batch.describe_compute_environments(computeEnvironments=["other-env"])["computeEnvironments"][0]["computeEnvironmentArn"]
    batch.update_job_queue(jobQueue=queue, computeEnvironmentOrder=[{"order": 1, "computeEnvironment": other}])
    batch.update_compute_environment(computeEnvironment="q-env", state="DISABLED")
    env_is = lambda: batch.describe_compute_environments(computeEnvironments=["q-env"])["computeEnvironments"][0]  # noqa: E731
    wait_for(lambda: (env_is()["state"], env_is()["status"]) == ("DISABLED", "VALID"), "q-env DISABLED and VALID")
    time.sleep(0.5)  # the queue's old relationship lingers while it is UPDATING
    assert submit.describe(aws, job)["status"] == "RUNNING"  # out of the queue, disabled: still running
    batch.delete_compute_environment(computeEnvironment="q-env")
    done = submit.wait(aws, job, timeout=15)
    assert (done["status"], done["statusReason"]) == ("FAILED", f"Host EC2 (instance {instance}) terminated.")
    state = aws.ec2().describe_instances(InstanceIds=[instance])["Reservations"][0]["Instances"][0]["State"]["Name"]
    assert state == "terminated"


@pytest.mark.parametrize("terminate", [True, False])
def test_an_infrastructure_update_terminates_running_jobs_only_when_its_policy_says_so(aws, terminate):
    """UpdatePolicy.terminateJobsOnUpdate; without it the job runs on (jobExecutionTimeoutMinutes, 30, is far off)."""
    batch = aws.batch()
    queue = make_queue(aws)
    job = submit.submit(aws, queue, IMAGE, ["sleep", "2"])
    submit.wait(aws, job, {"RUNNING"})
    aws.ec2().create_launch_template_version(LaunchTemplateName="tpl", LaunchTemplateData={"ImageId": "ami-87654321"})
    batch.update_compute_environment(
        computeEnvironment="q-env", computeResources={"launchTemplate": {"launchTemplateName": "tpl", "version": "2"}},
        updatePolicy={"terminateJobsOnUpdate": terminate},
    )
    done = submit.wait(aws, job, timeout=15)
    if terminate:
        assert done["status"] == "FAILED" and "terminateJobsOnUpdate" in done["statusReason"]
    else:
        assert done["status"] == "SUCCEEDED"


def test_an_arm64_task_registers_with_default_arm64_and_its_queue_runs_a_job(aws, tmp_path):
    """The arm64 chain on the local cloud: register (default_arm64, which moto alone refused) and a job on its queue."""
    from factory.config import FactoryConfig
    from factory.register import register_tasks
    from factory.spec import load_spec

    spec_path = tmp_path / "arm-task.yaml"
    spec_path.write_text(
        "name: arm-task\ndescription: an arm64 task\nimage: {architecture: arm64}\n"
        "storage: {max_input_gib: 10, footprint: {index_gib: 1, scratch_gib: 1, output_gib: 1}}\n"
    )
    spec = load_spec(spec_path)
    assert spec.batch.instance_types == ("default_arm64",)
    ec2, iam = aws.ec2(), aws.client("iam")
    iam.create_service_linked_role(AWSServiceName="batch.amazonaws.com")
    iam.create_role(RoleName="ecsInstanceRole", AssumeRolePolicyDocument="{}")
    iam.create_instance_profile(InstanceProfileName="ecsInstanceRole")
    iam.add_role_to_instance_profile(InstanceProfileName="ecsInstanceRole", RoleName="ecsInstanceRole")
    # an arm64 AMI as `factory bake` leaves it: made from an instance of an arm64 base, tagged with the task
    base = ec2.describe_images(Owners=["amazon"], Filters=[{"Name": "architecture", "Values": ["arm64"]}])["Images"][0]["ImageId"]
    instance = ec2.run_instances(ImageId=base, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    ami = ec2.create_image(InstanceId=instance, Name="factory-arm-task-1")["ImageId"]
    ec2.create_tags(Resources=[ami], Tags=[{"Key": "factory:task", "Value": "arm-task"}, {"Key": "factory:spec-hash", "Value": spec.spec_hash},
                                          {"Key": "factory:image-hash", "Value": "test"}])
    ec2.terminate_instances(InstanceIds=[instance])
    assert ec2.describe_images(ImageIds=[ami])["Images"][0]["Architecture"] == "arm64"

    result = register_tasks([spec], aws, config=FactoryConfig(), all_specs=[spec], poll=0.25)
    tier = result.for_task("arm-task")
    assert (tier.ami_id, tier.job_queue) == (ami, "factory-arm-task")
    assert not any(c.action == "failed" for c in tier.changes)
    ce = aws.batch().describe_compute_environments(computeEnvironments=["factory-arm-task"])["computeEnvironments"][0]
    assert ce["computeResources"]["instanceTypes"] == ["default_arm64"] and ce["status"] == "VALID"
    job = submit.submit(aws, "factory-arm-task", IMAGE, ["true"])
    done = submit.wait(aws, job, timeout=30)
    assert done["status"] == "SUCCEEDED"
    host = done["container"]["containerInstanceArn"].rsplit("/", 1)[1]
    launched = aws.ec2().describe_instances(InstanceIds=[host])["Reservations"][0]["Instances"][0]
    assert launched["InstanceType"].startswith("m6g.") and launched["ImageId"] == ami  # Graviton, from the task's launch template
