"""The same step for many tiers, a few at a time.

Tiers are independent: one tier's launch template, environment and queue never wait for
another's. So register sends each step for every tier side by side, then waits for all of
them in one loop (compute_environment.wait_all, job_queue.wait_all): a first register of
many tiers takes about as long as one, where one tier after another took minutes per tier.

At most WORKERS calls are in flight. AWS throttles each account per region: Batch answers
TooManyRequestsException past its request rate (the AWS Batch "Too Many Requests"
knowledge-center article: about 50 requests per second for the account, all Batch APIs
together), and EC2 refills its bucket of mutating requests at a few per second (EC2 API
reference, "Request throttling"). Five calls at a time stays well inside both, leaves room
for anything else the account runs, and botocore's standard retry mode (factory.aws) backs
off with jitter when AWS throttles anyway.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

WORKERS = 5


def each(items: Sequence[T], step: Callable[[T], R], workers: int = WORKERS) -> list[R]:
    """`step(item)` for every item, at most `workers` at a time; the answers in the items'
    order. Every step runs to its end even when another fails (a half-sent step is what a
    crash leaves: the next run finishes it); then the first failure, in the items' order,
    is raised."""
    if len(items) <= 1:
        return [step(i) for i in items]
    with ThreadPoolExecutor(max_workers=min(workers, len(items)), thread_name_prefix="register") as pool:
        futures = [pool.submit(step, i) for i in items]
    for f in futures:
        exc = f.exception()
        if exc is not None:
            raise exc
    return [f.result() for f in futures]
