"""AWS Batch as AWS runs it, where factory depends on it and moto differs.

| AWS | moto 5 | ours |
| --- | --- | --- |
| no `serviceRole`: Batch uses (and creates) its service-linked role `AWSServiceRoleForBatch` | refuses: "ServiceRole is required" | the service-linked role, created in IAM when missing |
| `UpdateComputeEnvironment` applies `computeResources` (launch template, instance types, ..., `updateToLatestImageVersion`) and `updatePolicy` | drops both | stores both; describe shows them (`updatePolicy` defaults to 30 minutes, no termination) |
| infrastructure updates (anything but min/max/desired vCPUs) only with the service-linked role and BEST_FIT_PROGRESSIVE / SPOT_CAPACITY_OPTIMIZED / SPOT_PRICE_CAPACITY_OPTIMIZED | allows everything | refuses with a ClientException naming the fields |
| environments and queues go CREATING/UPDATING/DELETING before VALID (or gone); no update while one is in progress; a describe right after an update may still show the old state | VALID at once, deleted at once | `state_delay` seconds in each transitional status, `stale_read` seconds of old reads after an update |
| an environment is deleted only when DISABLED and in no queue; a queue only when DISABLED; a queue takes only VALID environments; right after a queue update the old relationship lingers | deletes anything at once, takes any environment | refuses each, with AWS's wording where known ("Cannot delete, found existing JobQueue relationship") |
| `instanceTypes` takes `default_x86_64` and `default_arm64` (m6i/c6i/r6i/c7i and m6g/c6g/r6g/c7g families) beside `optimal` | "Instance type default_arm64 does not exist" | accepted, as the m6i and m6g families |
| jobs: SUBMITTED -> (PENDING) -> RUNNABLE -> STARTING -> RUNNING -> SUCCEEDED/FAILED on an instance of the queue's environment, and what queue/environment changes do to them | its own runner (the docker SDK, a bridge network; no queue or environment rules) | ours on the server's Docker engine: `factory.local.aws.rules.batch_jobs` |

AWS sources: Batch API reference (ComputeResource `instanceTypes`, CreateComputeEnvironment `serviceRole`,
UpdateComputeEnvironment, DeleteComputeEnvironment, DeleteJobQueue, UpdatePolicy), the
Batch user guide ("Using service-linked roles", "Perform infrastructure updates"), and
terraform-provider-aws #46925/#46927 for the lingering queue relationship.
"""

from __future__ import annotations

import copy
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from factory.local.aws.rules import Settings, batch_jobs

SLR_SERVICE = "batch.amazonaws.com"
SLR_PATH = ":role/aws-service-role/batch.amazonaws.com/"
SCALING_KEYS = {"minvCpus", "maxvCpus", "desiredvCpus"}
IN_PLACE_STRATEGIES = ("BEST_FIT_PROGRESSIVE", "SPOT_CAPACITY_OPTIMIZED", "SPOT_PRICE_CAPACITY_OPTIMIZED")
DEFAULT_UPDATE_POLICY = {"terminateJobsOnUpdate": False, "jobExecutionTimeoutMinutes": 30}
# Batch's own choices of instance types (ComputeResource.instanceTypes), as a family moto knows.
DEFAULT_INSTANCE_TYPES = {"default_x86_64": "m6i", "default_arm64": "m6g"}

_lock = threading.RLock()


@dataclass
class _Transition:
    status: str  # CREATING | UPDATING | DELETING
    until: float
    then: Callable[[], None] | None = None  # what happens when it ends (a deletion)
    stale_until: float = 0.0
    stale_view: dict[str, Any] | None = None  # what a describe shows before the change is visible
    lingering: list[Any] = field(default_factory=list)  # a queue's old environments, still related


class _Lifecycle:
    """Transitional statuses of Batch resources, by ARN."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.by_arn: dict[str, _Transition] = {}

    def start(self, arn: str, status: str, delay: float | None = None, **kw: Any) -> None:
        self.by_arn[arn] = _Transition(status, time.monotonic() + (self.settings.state_delay if delay is None else delay), **kw)

    def settle(self) -> None:
        now = time.monotonic()
        for arn, t in list(self.by_arn.items()):
            if now >= t.until:
                del self.by_arn[arn]
                if t.then:
                    t.then()

    def status(self, arn: str) -> str:
        t = self.by_arn.get(arn)
        return t.status if t else "VALID"

    def busy(self, arn: str) -> str | None:
        t = self.by_arn.get(arn)
        return t.status if t else None

    def view(self, arn: str, fresh: dict[str, Any]) -> dict[str, Any]:
        """What a describe answers for `arn` now: the old view during a stale read."""
        t = self.by_arn.get(arn)
        if t and t.stale_view is not None and time.monotonic() < t.stale_until:
            return copy.deepcopy(t.stale_view)
        if t:
            fresh["status"] = t.status
            fresh["statusReason"] = f"{t.status.capitalize()} (local cloud: {self.settings.state_delay:g}s)"
        return fresh

    def lingering(self, env: Any) -> bool:
        return any(env in t.lingering for t in self.by_arn.values())

    def forget(self, region: str, account: str) -> None:
        """Drop every transition of one region's resources (moto's reset forgot them): no
        DELETING's clean-up runs later on the reset backend, no UPDATING waits for a resource
        that is gone."""
        marker = f":batch:{region}:{account}:"
        for arn in [a for a in self.by_arn if marker in a]:
            del self.by_arn[arn]


def install(settings: Settings) -> None:
    from moto.batch import models, responses
    from moto.batch.exceptions import ClientException

    life = _Lifecycle(settings)
    def settle() -> None:
        with _lock:
            life.settle()

    jobs = batch_jobs.install(settings, life.status, settle)
    backend = models.BatchBackend
    original = {name: getattr(backend, name) for name in (
        "create_compute_environment", "describe_compute_environments", "update_compute_environment",
        "delete_compute_environment", "create_job_queue", "describe_job_queues", "update_job_queue", "delete_job_queue",
    )}

    validate_resources = backend._validate_compute_resources
    min_instances = backend.find_min_instances_to_meet_vcpus

    def as_families(instance_types: list[str]) -> list[str]:
        return [DEFAULT_INSTANCE_TYPES.get(t, t) for t in instance_types]

    def _validate_compute_resources(self: Any, cr: dict[str, Any]) -> None:
        if isinstance(cr, dict) and isinstance(cr.get("instanceTypes"), list):
            cr = dict(cr, instanceTypes=as_families(cr["instanceTypes"]))
        validate_resources(self, cr)

    def find_min_instances_to_meet_vcpus(instance_types: list[str], target: float) -> list[str]:
        return min_instances(as_families(instance_types), target)

    backend._validate_compute_resources = _validate_compute_resources
    backend.find_min_instances_to_meet_vcpus = staticmethod(find_min_instances_to_meet_vcpus)

    def service_linked_role(self: Any) -> str:
        iam = self.iam_backend
        for role in iam.roles.values():
            if SLR_PATH in role.arn:
                return role.arn
        return iam.create_service_linked_role(service_name=SLR_SERVICE, description="Batch", suffix="").arn

    def env_of(self: Any, name: str) -> Any:
        env = self.get_compute_environment(name)
        if env is None:
            raise ClientException(f"Compute environment {name} does not exist")
        return env

    def create_compute_environment(self, compute_environment_name, _type, state, compute_resources, service_role, tags=None):
        with _lock:
            life.settle()
            env = original["create_compute_environment"](
                self, compute_environment_name, _type, state, compute_resources, service_role or service_linked_role(self), tags
            )
            env.update_policy = dict(DEFAULT_UPDATE_POLICY)
            life.start(env.arn, "CREATING")
            return env

    def describe_compute_environments(self, environments=None):
        with _lock:
            life.settle()
            out = original["describe_compute_environments"](self, environments)
            for i, ce in enumerate(out):
                env = self._compute_environments.get(ce["computeEnvironmentArn"])
                ce["statusReason"] = "ComputeEnvironment Healthy"
                if env is not None:
                    ce["updatePolicy"] = dict(getattr(env, "update_policy", DEFAULT_UPDATE_POLICY))
                    ce["computeResources"] = copy.deepcopy(env.compute_resources)
                out[i] = life.view(ce["computeEnvironmentArn"], ce)
            return out

    def update_compute_environment(self, compute_environment_name, state, compute_resources, service_role, update_policy=None):
        with _lock:
            life.settle()
            env = env_of(self, compute_environment_name)
            if life.busy(env.arn):
                raise ClientException(f"Cannot update compute environment {env.name}: it is {life.busy(env.arn)}; wait until it is VALID")
            before = original["describe_compute_environments"](self, [env.arn])[0]
            before.update(statusReason="ComputeEnvironment Healthy", updatePolicy=dict(env.update_policy), computeResources=copy.deepcopy(env.compute_resources))
            resources = dict(compute_resources or {})
            infra = sorted(k for k in resources if k not in SCALING_KEYS)
            if infra or (service_role and service_role != env.service_role):
                role = service_role or env.service_role
                fields = ", ".join(infra) or "serviceRole"
                if SLR_PATH not in (role or ""):
                    raise ClientException(
                        f"Following fields [{fields}] can be updated only for Non-fargate Compute Environment having a Batch Service Linked Role"
                    )
                have = env.compute_resources.get("allocationStrategy", "BEST_FIT")
                want = resources.get("allocationStrategy", have)
                if infra and (have not in IN_PLACE_STRATEGIES or want not in IN_PLACE_STRATEGIES):
                    raise ClientException(
                        f"Following fields [{fields}] can be updated only for Compute Environment with allocation strategy "
                        f"{', '.join(IN_PLACE_STRATEGIES)} (it is {have}{'' if want == have else ' -> ' + want})"
                    )
            original["update_compute_environment"](self, env.name, state, None, service_role)
            for key, value in resources.items():
                if value in ("", None) or (isinstance(value, list) and not value and key != "instanceTypes"):
                    env.compute_resources.pop(key, None)  # AWS: an empty value removes the setting (e.g. ec2KeyPair "")
                else:
                    env.compute_resources[key] = copy.deepcopy(value)
            if update_policy:
                env.update_policy.update(update_policy)
            if infra:
                jobs.environment_updated(env, env.update_policy)
            rolling = settings.rolling_delay if infra and settings.rolling_delay is not None else None  # instances replaced: UPDATING until the old are gone
            life.start(env.arn, "UPDATING", rolling, stale_until=time.monotonic() + settings.stale_read, stale_view=before)
            return env.name, env.arn

    def delete_compute_environment(self, compute_environment_name):
        with _lock:
            life.settle()
            env = env_of(self, compute_environment_name)
            if life.busy(env.arn) == "DELETING":
                return
            if life.busy(env.arn):
                raise ClientException(f"Cannot delete compute environment {env.name}: it is {life.busy(env.arn)}")
            if env.state != "DISABLED":
                raise ClientException(f"Cannot delete compute environment {env.name}: its state is {env.state}; update it to DISABLED first")
            if any(env in q.environments for q in self._job_queues.values()) or life.lingering(env):
                raise ClientException("Cannot delete, found existing JobQueue relationship")
            def gone() -> None:
                jobs.environment_deleted(env)  # its instances are terminated, and the jobs on them
                original["delete_compute_environment"](self, env.arn)

            life.start(env.arn, "DELETING", then=gone)

    def check_order(self: Any, compute_env_order: list[dict[str, Any]] | None) -> None:
        for item in compute_env_order or []:
            env = self.get_compute_environment(item.get("computeEnvironment", ""))
            if env is not None and life.status(env.arn) != "VALID":
                raise ClientException(f"Compute environment {env.name} is not VALID (it is {life.status(env.arn)}); a job queue takes only VALID ones")

    def create_job_queue(self, queue_name, priority, schedule_policy, state, compute_env_order, tags=None):
        with _lock:
            life.settle()
            check_order(self, compute_env_order)
            queue = original["create_job_queue"](self, queue_name, priority, schedule_policy, state, compute_env_order, tags)
            life.start(queue.arn, "CREATING")
            return queue

    def describe_job_queues(self, job_queues=None):
        with _lock:
            life.settle()
            out = original["describe_job_queues"](self, job_queues)
            return [life.view(q["jobQueueArn"], q) for q in out]

    def update_job_queue(self, queue_name, priority, state, compute_env_order, schedule_policy):
        with _lock:
            life.settle()
            queue = self.get_job_queue(queue_name)
            if queue is not None and life.busy(queue.arn):
                raise ClientException(f"Cannot update job queue {queue.name}: it is {life.busy(queue.arn)}")
            check_order(self, compute_env_order)
            before = copy.deepcopy(queue.describe()) if queue is not None else None
            old = list(queue.environments) if queue is not None else []
            result = original["update_job_queue"](self, queue_name, priority, state, compute_env_order, schedule_policy)
            life.start(queue.arn, "UPDATING", stale_until=time.monotonic() + settings.stale_read, stale_view=before, lingering=old)
            return result

    def delete_job_queue(self, queue_name):
        with _lock:
            life.settle()
            queue = self.get_job_queue(queue_name)
            if queue is None:
                return
            if life.busy(queue.arn) == "DELETING":
                return
            if life.busy(queue.arn):
                raise ClientException(f"Cannot delete job queue {queue.name}: it is {life.busy(queue.arn)}")
            if queue.state != "DISABLED":
                raise ClientException(f"Cannot delete job queue {queue.name}: its state is {queue.state}; update it to DISABLED first")
            jobs.queue_deleted(queue)  # DeleteJobQueue: "all jobs in the queue are eventually terminated"
            life.start(queue.arn, "DELETING", then=lambda: original["delete_job_queue"](self, queue.arn))

    reset_backend = backend.reset

    def reset(self: Any) -> None:  # moto's /moto-api/reset: forget the transitions with the resources
        with _lock:
            life.forget(self.region_name, self.account_id)
        reset_backend(self)

    backend.reset = reset

    for fn in (create_compute_environment, describe_compute_environments, update_compute_environment, delete_compute_environment,
               create_job_queue, describe_job_queues, update_job_queue, delete_job_queue):
        setattr(backend, fn.__name__, fn)

    def updatecomputeenvironment(self) -> str:
        import json

        name, arn = self.batch_backend.update_compute_environment(
            compute_environment_name=self._get_param("computeEnvironment"),
            compute_resources=self._get_param("computeResources"),
            service_role=self._get_param("serviceRole"),
            state=self._get_param("state"),
            update_policy=self._get_param("updatePolicy"),
        )
        return json.dumps({"computeEnvironmentArn": arn, "computeEnvironmentName": name})

    responses.BatchResponse.updatecomputeenvironment = updatecomputeenvironment
