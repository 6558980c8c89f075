"""AWS Batch's fixed quotas, where moto has none.

| AWS | moto 5 | ours |
| --- | --- | --- |
| at most 50 compute environments and 50 job queues per region; these quotas cannot be raised | any number | CreateComputeEnvironment / CreateJobQueue refused past 50 (a ClientException naming the quota) |
| a job queue takes at most 3 compute environments | any number | CreateJobQueue / UpdateJobQueue refused with more than 3 |

AWS source: Batch User Guide, "AWS Batch service quotas" (each quota is per region and
cannot be changed). Installed after factory.local.aws.rules.batch, around its methods.
"""

from __future__ import annotations

from typing import Any

from factory.local.aws.rules import Settings

ENVIRONMENTS = 50
QUEUES = 50
ENVIRONMENTS_PER_QUEUE = 3


def install(settings: Settings) -> None:
    from moto.batch import models
    from moto.batch.exceptions import ClientException

    backend = models.BatchBackend
    create_ce, create_queue, update_queue = backend.create_compute_environment, backend.create_job_queue, backend.update_job_queue

    def per_queue(order: list[dict[str, Any]] | None) -> None:
        if order and len(order) > ENVIRONMENTS_PER_QUEUE:
            raise ClientException(
                f"A job queue takes at most {ENVIRONMENTS_PER_QUEUE} compute environments (computeEnvironmentOrder has {len(order)})"
            )

    def create_compute_environment(self, compute_environment_name, _type, state, compute_resources, service_role, tags=None):
        if self.get_compute_environment(compute_environment_name) is None and len(self._compute_environments) >= ENVIRONMENTS:
            raise ClientException(
                f"Cannot create compute environment {compute_environment_name}: the account has {len(self._compute_environments)} "
                f"compute environments in this region, the most AWS Batch allows ({ENVIRONMENTS}, a quota that cannot be increased)"
            )
        return create_ce(self, compute_environment_name, _type, state, compute_resources, service_role, tags)

    def create_job_queue(self, queue_name, priority, schedule_policy, state, compute_env_order, tags=None):
        per_queue(compute_env_order)
        if self.get_job_queue(queue_name) is None and len(self._job_queues) >= QUEUES:
            raise ClientException(
                f"Cannot create job queue {queue_name}: the account has {len(self._job_queues)} job queues in this region, "
                f"the most AWS Batch allows ({QUEUES}, a quota that cannot be increased)"
            )
        return create_queue(self, queue_name, priority, schedule_policy, state, compute_env_order, tags)

    def update_job_queue(self, queue_name, priority, state, compute_env_order, schedule_policy):
        per_queue(compute_env_order)
        return update_queue(self, queue_name, priority, state, compute_env_order, schedule_policy)

    for fn in (create_compute_environment, create_job_queue, update_job_queue):
        setattr(backend, fn.__name__, fn)
