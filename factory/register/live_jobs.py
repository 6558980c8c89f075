"""Jobs that still need a queue or a compute environment factory is about to delete.

AWS Batch terminates every job of a queue it deletes ("All jobs in the queue are eventually
terminated when you delete a job queue", DeleteJobQueue, AWS Batch API reference), and
deleting a compute environment terminates its instances, so the jobs running on them.
A disabled queue takes no new jobs but lets the ones it holds finish; a disabled
environment gets no new jobs placed but lets STARTING and RUNNING ones run on (the Batch
user guide, "Job queue parameters" and "Compute environment parameters", `state`). So
factory disables what it retires, and deletes it only once no job needs it.

- A queue is held by its jobs in any of the states before an end: SUBMITTED, PENDING,
  RUNNABLE, STARTING, RUNNING (ListJobs, one status per call, every page).
- An environment that left its queue (a blue/green replacement, a retired tier) is held
  by the queue's jobs that were already placed (STARTING or RUNNING) when it was retired:
  a job created after that can only be placed on the environments the queue names now.
  The moment is kept on the environment as the tag `factory:retired-at` (set before it is
  disabled, so a run that dies in between leaves the same answer for the next one). Batch's
  job detail does not name the environment, so this is an upper bound: a job of the queue
  created before the replacement and placed on the new environment holds the old one too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from factory.aws import aws_errors
from factory.register.reads import paged

ACTIVE = ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING")  # a queue's jobs that have not ended
PLACED = ("STARTING", "RUNNING")  # on an instance of some compute environment
TAG_RETIRED = "factory:retired-at"
SHOWN = 5  # jobs named in a message; the rest are counted


@dataclass(frozen=True)
class LiveJob:
    job_id: str
    name: str
    status: str
    queue: str
    created_ms: int

    def text(self) -> str:
        return f"{self.name} ({self.job_id}, {self.status})"


def live_jobs(batch: Any, queue: str, statuses: tuple[str, ...] = ACTIVE) -> list[LiveJob]:
    """The jobs of `queue` in `statuses`, oldest first."""
    jobs: list[LiveJob] = []
    with aws_errors(f"listing the jobs of queue {queue}"):
        for status in statuses:
            for j in paged(batch, "list_jobs", "jobSummaryList", jobQueue=queue, jobStatus=status):
                jobs.append(LiveJob(j["jobId"], j.get("jobName", "?"), j.get("status", status), queue, int(j.get("createdAt") or 0)))
    return sorted(jobs, key=lambda j: (j.created_ms, j.job_id))


def named(jobs: list[LiveJob]) -> str:
    """`n jobs: a (id, RUNNING), b (id, RUNNABLE), ... and k more`."""
    head = ", ".join(j.text() for j in jobs[:SHOWN])
    more = f" and {len(jobs) - SHOWN} more" if len(jobs) > SHOWN else ""
    return f"{len(jobs)} job{'s' if len(jobs) != 1 else ''}: {head}{more}"


def now_tag() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def tag_ms(value: str | None) -> int | None:
    """A `factory:retired-at` value in epoch milliseconds (Batch's createdAt unit); None when
    absent or unreadable."""
    if not value:
        return None
    try:
        return int(datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp() * 1000)
    except ValueError:
        return None


def placed_before(batch: Any, queues: list[str], retired_ms: int | None) -> list[LiveJob]:
    """The STARTING/RUNNING jobs of `queues` created before `retired_ms` (all of them when
    None: not retired yet). The tag has whole seconds: a job of that same second counts."""
    jobs = [j for q in queues for j in live_jobs(batch, q, PLACED)]
    if retired_ms is None:
        return jobs
    return [j for j in jobs if j.created_ms < retired_ms + 1000]


def drain(dry_run: bool, changes: list[Any], resource: str, name: str, reason: str, state: str | None, disable: Callable[[], Any]) -> None:
    """What factory does with a queue or an environment jobs still need: say so (action
    `drain`, with `reason`), and disable it (`disable()`: no new jobs) unless it already is
    or this is a dry run. It is deleted by a later run, once nothing needs it."""
    from factory.register.results import Change

    changes.append(Change(resource, name, "drain", reason))
    if not dry_run and state != "DISABLED":
        with aws_errors(f"disabling {resource.replace('-', ' ')} {name}"):
            disable()
