"""The tier's job queue `factory-<tier>`, ENABLED, in front of its compute environment."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from factory.aws import aws_errors
from factory.errors import FactoryError
from factory.register.names import TAG_MANAGED
from factory.register.reads import job_queues
from factory.register.results import Change
from factory.register.run import Run
from factory.register.targets import TierTarget
from factory.register.waits import batch_standing, until_all_described


def find(batch: Any, name: str, known: dict[str, dict[str, Any]] | None = None) -> dict[str, Any] | None:
    """The queue `name` (None when there is none); `known` is every queue of the region by
    name (RegionReads.queues), read once for all tiers."""
    if known is not None:
        queues = [known[name]] if name in known else []
    else:
        queues = [q for q in job_queues(batch, [name]) if q.get("status") not in ("DELETING", "DELETED")]
    if queues and (queues[0].get("tags") or {}).get(TAG_MANAGED) != "true":
        raise FactoryError(f"job queue {name} exists but is not managed by factory (no tag {TAG_MANAGED}=true): delete or rename it")
    return queues[0] if queues else None


def _order_names(queue: dict[str, Any]) -> list[str]:
    return [o["computeEnvironment"].split("/")[-1] for o in sorted(queue.get("computeEnvironmentOrder", []), key=lambda o: o["order"])]


@dataclass(frozen=True)
class Pending:
    """A change sent to a queue that register waits for (with the others: wait_all)."""

    name: str
    ce_name: str | None  # the one environment the queue must be in front of
    priority: int | None
    state: str = "ENABLED"


def reconcile(
    run: Run, batch: Any, target: TierTarget, queue: dict[str, Any] | None, ce_name: str, ce_arn: str | None, changes: list[Change],
    ce_busy: str | None = None,
) -> Pending | None:
    """Sends what the tier's queue needs and returns at once: what to wait for, if anything.
    `ce_busy`: the environment is UPDATING (an image roll draining old instances, for up to
    the update policy's timeout); a queue create or update names it in
    computeEnvironmentOrder, which AWS takes only for VALID environments, so the change is
    deferred to a later run and said so, never sent to be refused."""
    name = target.name
    priority = run.config.batch.queue_priority
    order = [{"order": 1, "computeEnvironment": ce_arn or ce_name}]

    def defer(what: str) -> None:
        changes.append(Change(
            "job-queue", name, "deferred",
            f"not sent: {what}, but compute environment {ce_name} is {ce_busy} and AWS puts only VALID environments in a queue. "
            "Run `factory register` again once it is VALID",
        ))

    if queue is None and ce_busy:
        defer(f"new, in front of {ce_name}")
        return None
    if queue is None:
        changes.append(Change("job-queue", name, "create", f"new, in front of {ce_name}"))
        if not run.dry_run:
            run.progress(f"creating job queue {name}")
            with aws_errors(f"creating job queue {name}"):
                batch.create_job_queue(jobQueueName=name, state="ENABLED", priority=priority, computeEnvironmentOrder=order, tags=target.tags)
            return Pending(name, ce_name, priority)
        return None
    diffs = []
    if _order_names(queue) != [ce_name]:
        diffs.append(f"compute environment {', '.join(_order_names(queue)) or 'none'} -> {ce_name}")
    if queue.get("state") != "ENABLED":
        diffs.append(f"state {queue.get('state')} -> ENABLED")
    if int(queue.get("priority", priority)) != priority:
        diffs.append(f"priority {queue.get('priority')} -> {priority}")
    pending = None
    if diffs and ce_busy:
        defer("; ".join(diffs))
    elif diffs:
        changes.append(Change("job-queue", name, "update", "; ".join(diffs)))
        if not run.dry_run:
            with aws_errors(f"updating job queue {name}"):
                batch.update_job_queue(jobQueue=name, state="ENABLED", priority=priority, computeEnvironmentOrder=order)
            pending = Pending(name, ce_name, priority)
    else:
        changes.append(Change("job-queue", name, "unchanged", f"in front of {ce_name}"))
    run.sync_batch_tags(batch, "job-queue", name, queue["jobQueueArn"], queue.get("tags"), target.tags, changes)
    return pending


def wait_until_settled(run: Run, batch: Any, name: str, ce_name: str | None, priority: int | None, state: str = "ENABLED") -> None:
    """Until the queue exists, is VALID, in `state`, and in front of `ce_name` (a missing
    queue is not ready: right after CreateJobQueue a describe may not show it yet)."""
    wait_all(run, batch, [Pending(name, ce_name, priority, state)])


def wait_all(run: Run, batch: Any, pendings: list[Pending]) -> None:
    """One wait for every queue in `pendings` (waits.until_all_described)."""
    by_name = {p.name: p for p in pendings}
    until_all_described(run.waiter, "job queue", list(by_name), lambda names: job_queues(batch, names),
                        "jobQueueName", lambda n, q: _standing(by_name[n], q))


def _standing(pending: Pending, queue: dict[str, Any] | None) -> tuple[bool, str]:
    where = batch_standing("job queue", pending.name, [queue] if queue else [], pending.state)
    if where is not None:
        return False, where
    assert queue is not None
    if pending.ce_name is not None and _order_names(queue) != [pending.ce_name]:
        return False, f"VALID, still in front of {', '.join(_order_names(queue)) or 'nothing'}"
    if pending.priority is not None and int(queue.get("priority", pending.priority)) != pending.priority:
        return False, "VALID with the old priority"
    return True, "VALID"
