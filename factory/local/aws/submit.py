"""One Batch job on a queue of the local cloud, and following it: `factory local submit` and the tests.

A user rehearses "what happens to my running pipeline" (a prune, a blue/green replace)
by submitting a job that runs for a while, then running factory, then watching the job;
the tests do the same. The job is a plain Batch job: a job definition for the image
(registered once per image, `factory-local-<image>`), SubmitJob with the command as the
container override, DescribeJobs until it reaches the wanted states. The local cloud runs
it in a container on its Docker engine (docs/local-cloud.md, "Batch jobs").

    job = submit(clients, "factory-salmon-quant", "busybox:latest", ["sleep", "30"])
    wait(clients, job, {"RUNNING"})
"""

from __future__ import annotations

import re
import time
from typing import Any, Callable, Collection

from factory.aws import aws_errors
from factory.errors import LocalCloudError, UsageError

DONE = frozenset({"SUCCEEDED", "FAILED"})
STATES = ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING", "SUCCEEDED", "FAILED")
JOB_MEMORY_MIB = 128  # the job definition's memory: a rehearsal's container is small
_NOT_NAME = re.compile(r"[^A-Za-z0-9_-]+")


def definition_name(image: str) -> str:
    """The job definition's name for `image` (letters, digits, - and _, at most 128)."""
    return ("factory-local-" + _NOT_NAME.sub("-", image).strip("-"))[:128]


def submit(clients: Any, queue: str, image: str, command: list[str], name: str = "factory-local") -> str:
    """Submit COMMAND in IMAGE to QUEUE; returns the job id. A queue that does not exist is a UsageError."""
    if not command:
        raise UsageError("give the job's command after `--`, e.g. `factory local submit QUEUE --image IMAGE -- sleep 30`")
    batch = clients.batch()
    with aws_errors(f"reading job queue {queue}"):
        found = batch.describe_job_queues(jobQueues=[queue]).get("jobQueues", [])  # one name: one page, no maxResults
    if not found:
        raise UsageError(f"no job queue {queue} on the local cloud: `factory register --cloud local` makes factory-<tier> queues")
    with aws_errors(f"registering job definition {definition_name(image)}"):
        definition = batch.register_job_definition(
            jobDefinitionName=definition_name(image), type="container",
            containerProperties={"image": image, "resourceRequirements": [
                {"type": "VCPU", "value": "1"}, {"type": "MEMORY", "value": str(JOB_MEMORY_MIB)}]},
        )["jobDefinitionArn"]
    with aws_errors(f"submitting a job to {queue}"):
        return batch.submit_job(jobName=name, jobQueue=queue, jobDefinition=definition,
                                containerOverrides={"command": list(command)})["jobId"]


def describe(clients: Any, job_id: str) -> dict[str, Any]:
    with aws_errors(f"describing job {job_id}"):
        found = clients.batch().describe_jobs(jobs=[job_id])["jobs"]  # one id: one answer (DescribeJobs has no maxResults)
    if not found:
        raise LocalCloudError(f"job {job_id} is not known to the local cloud (was it reset or stopped?)")
    return found[0]


def wait(
    clients: Any,
    job_id: str,
    until: Collection[str] = DONE,
    timeout: float = 120.0,
    on_status: Callable[[dict[str, Any]], None] | None = None,
    poll: float = 0.05,
) -> dict[str, Any]:
    """DescribeJobs until the job's status is one of `until` (or it is done); calls `on_status`
    with each new status's describe. A LocalCloudError naming the status when `timeout` passes."""
    deadline = time.monotonic() + timeout
    seen = None
    while True:
        job = describe(clients, job_id)
        if job["status"] != seen:
            seen = job["status"]
            if on_status:
                on_status(job)
        if seen in until or seen in DONE:
            return job
        if time.monotonic() >= deadline:
            raise LocalCloudError(f"job {job_id} is still {seen} after {timeout:g}s (wanted {' or '.join(sorted(until))})")
        time.sleep(poll)


def log_lines(clients: Any, job: dict[str, Any]) -> list[str]:
    """The job's output, from its CloudWatch Logs stream (none before it ran)."""
    stream = (job.get("container") or {}).get("logStreamName")
    if not stream:
        return []
    with aws_errors(f"reading the log of job {job['jobId']}"):
        events = clients.client("logs").get_log_events(logGroupName="/aws/batch/job", logStreamName=stream, startFromHead=True)["events"]
    return [e["message"] for e in events]
