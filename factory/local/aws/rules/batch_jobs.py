"""AWS Batch jobs on the local cloud: each one a container on a real Docker engine, in AWS's states.

moto's own runner (the docker SDK, a bridge network and `host-gateway`, which the local
cloud's `--bridge=none` engines have not) knows nothing of queues and environments. This
one replaces `moto.batch.models.Job.run` (each job is a moto `Job`, a thread, so
SubmitJob, DescribeJobs, ListJobs, CancelJob and TerminateJob are moto's calls) and
follows the Batch user guide's "Job states" and the API reference:

| AWS | the local cloud |
| --- | --- |
| SUBMITTED, then PENDING while dependencies are outstanding, then RUNNABLE | the same; each of SUBMITTED, RUNNABLE and STARTING lasts at least `job_step` seconds (0.3) |
| RUNNABLE until an environment of the queue (in its order) is ENABLED, VALID and has room (`maxvCpus`); "jobs can remain in this state indefinitely" | the same: a DISABLED environment, one still CREATING, or `maxvCpus` taken by running jobs keeps a job RUNNABLE |
| STARTING: scheduled to a host, the image pulled, the container created | an instance of the environment (one it has, else one launched from its launch template, in EC2), then `docker create` on the server's engine (DOCKER_HOST where the server started), no registry pull (`--pull never`), no network |
| RUNNING, then SUCCEEDED (exit 0) or FAILED ("Essential container in task exited") | the same; `container.exitCode`; the output in CloudWatch Logs `/aws/batch/job` |
| a DISABLED queue takes no new job; "jobs already in the queue can finish" | SubmitJob refused; its jobs run on |
| a DISABLED environment gets no new job; "jobs in a STARTING or RUNNING state continue to progress normally" | the same |
| DeleteJobQueue: "all jobs in the queue are eventually terminated" | every unfinished job FAILED when the deletion starts |
| an environment's deletion terminates its instances | jobs still running on them FAILED, "Host EC2 (instance ID) terminated." |
| an infrastructure update with `updatePolicy.terminateJobsOnUpdate` terminates running jobs; without, they run up to `jobExecutionTimeoutMinutes` | the same |
| CancelJob fails SUBMITTED/PENDING/RUNNABLE jobs, not started ones; TerminateJob fails STARTING/RUNNING ones too | moto's calls; here the container is killed and the job FAILED with the reason given |
| `timeout.attemptDurationSeconds` | the container is killed, FAILED |

Not reproduced: the ECS agent, retries (`retryStrategy`), multi-node jobs, scaling in of
idle instances, CPU and memory limits (the container shares this machine's).
"""

from __future__ import annotations

import atexit
import os
import subprocess
import threading
import time
from typing import Any, Callable

from factory.local.aws.rules import Settings

CONTAINER_PREFIX = "factory-batch-"
LABEL = "factory.local.batch-job"
LOG_GROUP = "/aws/batch/job"
EXITED = "Essential container in task exited"
PLACEABLE = ("VALID", "UPDATING")  # environment statuses the scheduler places jobs on


class Stop(Exception):
    """The job ends here, FAILED with `reason`."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class Jobs:
    """The scheduler and the runner of the local cloud's Batch jobs (one per server)."""

    def __init__(self, settings: Settings, env_status: Callable[[str], str], settle: Callable[[], None]):
        self.settings = settings
        self.env_status = env_status  # a compute environment's status by ARN (CREATING, VALID, ...)
        self.settle = settle  # ends the Batch transitions that are due (a deletion's effects with it)
        self.placed: dict[str, tuple[Any, Any, str | None]] = {}  # job id -> (job, environment, instance id)
        self.deadlines: dict[str, tuple[float, str]] = {}  # job id -> (when, why) it is terminated
        self.lock = threading.RLock()

    # -- what the Batch calls and the rules do to jobs ---------------------------------

    def queue_deleted(self, queue: Any) -> None:
        for job in list(queue.jobs):
            if not job.job_stopped:
                job.terminate(f"Job queue {queue.name} deleted (DeleteJobQueue terminates every job in the queue)")

    def environment_deleted(self, env: Any) -> None:
        for job, _, instance in self._on(env):
            job.terminate(f"Host EC2 (instance {instance}) terminated." if instance else f"Compute environment {env.name} deleted")

    def environment_updated(self, env: Any, policy: dict[str, Any]) -> None:
        """An infrastructure update: running jobs terminated now, or after the policy's timeout."""
        reason = f"Compute environment {env.name} infrastructure update"
        for job, _, _ in self._on(env):
            if policy.get("terminateJobsOnUpdate"):
                job.terminate(f"{reason} (updatePolicy.terminateJobsOnUpdate)")
            else:
                minutes = float(policy.get("jobExecutionTimeoutMinutes", 30))
                with self.lock:
                    self.deadlines.setdefault(job.job_id, (time.monotonic() + minutes * 60, f"{reason}: jobExecutionTimeoutMinutes ({minutes:g}) reached"))

    def _on(self, env: Any) -> list[tuple[Any, Any, str | None]]:
        with self.lock:
            return [p for p in self.placed.values() if p[1].arn == env.arn]

    def shutdown(self) -> None:
        """Kill every job container this server started (the server is stopping)."""
        with self.lock:
            names = [CONTAINER_PREFIX + job_id.replace(":", "-") for job_id in self.placed]
        if names:
            subprocess.run(["docker", "rm", "-f", *names], capture_output=True, check=False, timeout=60)

    # -- one job, on its own thread (moto's Job is a Thread; this is its run) ----------

    def run(self, job: Any) -> None:
        try:
            self._hold(job, "SUBMITTED")
            if job.depends_on:
                job.status = "PENDING"
                if not job._wait_for_dependencies():  # moto's: FAILED when a dependency failed
                    return
            job.status = "RUNNABLE"
            env = self._schedule(job)
            self._start_and_wait(job, env)
        except Stop as stop:
            self._finish(job, success=False, reason=stop.reason)
        except Exception as exc:  # the job fails, the server runs on
            self._finish(job, success=False, reason=f"local cloud: {type(exc).__name__}: {exc}")
        finally:
            with self.lock:
                self.placed.pop(job.job_id, None)
                self.deadlines.pop(job.job_id, None)

    def _hold(self, job: Any, status: str) -> None:
        job.status = status
        until = time.monotonic() + self.settings.job_step
        while time.monotonic() < until:
            self._check(job)
            time.sleep(0.05)
        self._check(job)

    def _check(self, job: Any) -> None:
        if job.stop:
            raise Stop(job.job_stopped_reason or "Terminated")
        with self.lock:
            deadline = self.deadlines.get(job.job_id)
        if deadline and time.monotonic() >= deadline[0]:
            raise Stop(deadline[1])
        timeout = (job.timeout or {}).get("attemptDurationSeconds")
        if timeout and job.status == "RUNNING" and time.time() - job.job_started_at.timestamp() >= float(timeout):
            raise Stop("Job attempt duration exceeded timeout")

    def _schedule(self, job: Any) -> Any:
        """Wait in RUNNABLE (at least one step) for an environment of the queue that takes the job."""
        earliest = time.monotonic() + self.settings.job_step
        while True:
            self._check(job)
            if time.monotonic() >= earliest:
                self.settle()  # before our lock: settling may call back into it
                with self.lock:
                    env = self._place(job)
                    if env is not None:
                        return env
            time.sleep(0.1)

    def _place(self, job: Any) -> Any:
        queue = job.job_queue
        order = {o.get("computeEnvironment"): int(o.get("order", 0)) for o in queue.env_order_json or []}
        envs = sorted(queue.environments, key=lambda e: order.get(e.arn, order.get(e.name, 0)))
        need = _vcpus(job)
        for env in envs:
            if env.state != "ENABLED" or self.env_status(env.arn) not in PLACEABLE:
                continue
            used = sum(_vcpus(j) for j, e, _ in self.placed.values() if e.arn == env.arn)
            if used + need > int((env.compute_resources or {}).get("maxvCpus", 0)):
                continue
            self.placed[job.job_id] = (job, env, None)
            return env
        return None

    def _start_and_wait(self, job: Any, env: Any) -> None:
        from datetime import datetime

        from factory.docker_cli import DockerCli
        from factory.errors import DockerError

        job.status = "STARTING"
        started = time.monotonic()
        instance = _instance_of(job.backend, env)
        with self.lock:
            self.placed[job.job_id] = (job, env, instance)
        name = CONTAINER_PREFIX + job.job_id.replace(":", "-")
        props = job.job_definition.container_properties
        if props is None:
            raise Stop("local cloud: multi-node jobs are not run (docs/local-cloud.md)")
        try:
            docker = DockerCli(dict(os.environ))
            env_vars = {e["name"]: e["value"] for e in job._get_container_property("environment", [])}
            env_vars.update(AWS_BATCH_JQ_NAME=job.job_queue.name, AWS_BATCH_CE_NAME=env.name, AWS_BATCH_JOB_ATTEMPT="1")
            args = ["create", "--name", name, "--label", f"{LABEL}={job.job_id}", "--network", "none", "--pull", "never"]
            for key, value in env_vars.items():
                args += ["-e", f"{key}={value}"]
            command = job._add_parameters_to_command(job._get_container_property("command", []))
            docker.run(*args, props.get("image", ""), *command, timeout=120)
        except DockerError as exc:
            pulled = "No such image" in exc.message or "pull access" in exc.message
            time.sleep(max(0.0, started + self.settings.job_step - time.monotonic()))  # STARTING lasts job_step, a failed start too
            raise Stop(("CannotPullContainerError: " if pulled else "CannotStartContainerError: ") + exc.message) from None
        try:
            while time.monotonic() < started + self.settings.job_step:
                self._check(job)
                time.sleep(0.05)
            self._check(job)
            job.job_started_at = datetime.now()
            job._start_attempt()
            job.latest_attempt["container"]["containerInstanceArn"] = _container_instance_arn(job, env, instance)
            docker.run("start", name, timeout=120)
            job.status = "RUNNING"
            waiter = subprocess.Popen(["docker", "wait", name], env=docker.env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            try:
                while waiter.poll() is None:
                    try:
                        self._check(job)
                    except Stop:
                        docker.run("kill", name, check=False, timeout=60)  # SIGKILL: the exit code is 137
                        out, _ = waiter.communicate(timeout=60)
                        job.exit_code = _exit_code(out)
                        raise
                    time.sleep(0.1)
                out = waiter.stdout.read() if waiter.stdout else ""
            finally:
                if waiter.poll() is None:
                    waiter.kill()
                waiter.wait()
            code = job.exit_code = _exit_code(out)
            self._keep_logs(job, docker, name)
            self._finish(job, success=code == 0, reason=None if code == 0 else EXITED)
        except Stop:
            self._keep_logs(job, docker, name)
            raise
        finally:
            docker.run("rm", "-f", name, check=False, timeout=60)

    def _keep_logs(self, job: Any, docker: Any, name: str) -> None:
        """The container's output as the job's log stream, as the awslogs driver keeps it."""
        proc = docker.run("logs", name, check=False, timeout=60)
        lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line]
        stream = f"{job.job_definition.name}/default/{job.job_id}"
        logs = job._log_backend
        logs.ensure_log_group(LOG_GROUP)
        logs.ensure_log_stream(LOG_GROUP, stream)
        now = int(time.time() * 1000)
        if lines:
            logs.put_log_events(LOG_GROUP, stream, [{"timestamp": now, "message": line} for line in lines])
        job.log_stream_name = stream

    def _finish(self, job: Any, success: bool, reason: str | None) -> None:
        if job.job_stopped:
            return
        if reason is not None:
            job.job_stopped_reason = reason
        if job.latest_attempt is not None:
            container = job.latest_attempt["container"]
            if job.exit_code is not None:
                container["exitCode"] = job.exit_code
            if reason:
                container["reason"] = reason
                job.latest_attempt["statusReason"] = reason
        job._mark_stopped(success=success)


def _exit_code(out: str | None) -> int | None:
    """What `docker wait` printed: the container's exit status (None when it printed none)."""
    try:
        return int((out or "").strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None


def _vcpus(job: Any) -> int:
    try:
        return max(1, int(float(job._get_container_property("vcpus", 1))))
    except (TypeError, ValueError, AssertionError):
        return 1


def _instance_of(backend: Any, env: Any) -> str | None:
    """An instance of the environment that is running, else one launched as Batch would (EC2 in moto)."""
    for instance in env.instances:
        if getattr(getattr(instance, "_state", None), "name", "") == "running":
            return instance.id
    cr = env.compute_resources or {}
    ec2 = backend.ec2_backend
    template = cr.get("launchTemplate") or {}
    kwargs: dict[str, Any] = {}
    image = "ami-03cf127a"  # moto's own placeholder, as moto's create_compute_environment uses
    try:
        if template:
            found = (ec2.get_launch_template(template["launchTemplateId"]) if template.get("launchTemplateId")
                     else ec2.get_launch_template_by_name(template["launchTemplateName"]))
            version = found.get_version(template.get("version") or "$Default")
            image = version.image_id or image
            kwargs["launch_template"] = {"LaunchTemplateId": found.id, "Version": str(version.number)}
        instance_type = backend.find_min_instances_to_meet_vcpus(cr.get("instanceTypes") or ["optimal"], 1)[0]
        reservation = ec2.run_instances(
            image_id=image, count=1, user_data=None, security_group_names=[], instance_type=instance_type,
            region_name=backend.region_name, subnet_id=(cr.get("subnets") or [None])[0],
            key_name=cr.get("ec2KeyPair", "AWS_OWNED"), security_group_ids=cr.get("securityGroupIds") or [],
            is_instance_type_default=False, tags={"instance": {"aws:batch:compute-environment": env.name}}, **kwargs,
        )
    except Exception:  # no instance: the job still runs, on no named host
        return None
    instance = reservation.instances[0]
    env.add_instance(instance)
    return instance.id


def _container_instance_arn(job: Any, env: Any, instance: str | None) -> str:
    backend = job.backend
    return f"arn:aws:ecs:{backend.region_name}:{backend.account_id}:container-instance/{env.ecs_name or env.name}/{instance or 'none'}"


def install(settings: Settings, env_status: Callable[[str], str], settle: Callable[[], None]) -> Jobs:
    """Replace moto's job runner with ours; SubmitJob refuses a DISABLED queue; the describe's container keeps the exit code."""
    from moto.batch import models
    from moto.batch.exceptions import ClientException

    jobs = Jobs(settings, env_status, settle)
    models.Job.run = lambda job: jobs.run(job)
    submit = models.BatchBackend.submit_job
    describe = models.Job.describe
    describe_short = models.Job.describe_short

    def submit_job(self: Any, job_name: str, job_def_id: str, job_queue: str, *args: Any, **kwargs: Any) -> Any:
        queue = self.get_job_queue(job_queue)
        if queue is not None and queue.state != "ENABLED":
            raise ClientException(f"Job queue {queue.name} is {queue.state}: it takes no new jobs (UpdateJobQueue state ENABLED)")
        return submit(self, job_name, job_def_id, job_queue, *args, **kwargs)

    def describe_job_short(job: Any) -> dict[str, Any]:
        out = describe_short(job)
        if job.latest_attempt is None:
            out.pop("startedAt", None)  # a job that never started has no startedAt (moto gives 1970)
        return out

    def describe_job(job: Any) -> dict[str, Any]:
        out = describe(job)
        container = out.get("container")
        if isinstance(container, dict):
            if job.exit_code is not None:
                container["exitCode"] = job.exit_code
            if job.job_stopped_reason and job.status == "FAILED":
                container.setdefault("reason", job.job_stopped_reason)
            if job.latest_attempt is not None:
                container["containerInstanceArn"] = job.latest_attempt["container"].get("containerInstanceArn")
        return out

    def settled(name: str) -> Callable[..., Any]:
        call = getattr(models.BatchBackend, name)

        def answer(self: Any, *args: Any, **kwargs: Any) -> Any:
            settle()  # the transitions that are due end before the jobs are read, as for describes of queues
            return call(self, *args, **kwargs)

        return answer

    models.BatchBackend.describe_jobs = settled("describe_jobs")
    models.BatchBackend.list_jobs = settled("list_jobs")
    models.BatchBackend.submit_job = submit_job
    models.Job.describe = describe_job
    models.Job.describe_short = describe_job_short
    atexit.register(jobs.shutdown)
    return jobs
