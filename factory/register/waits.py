"""Waiting for AWS to get there: the effect of a change, not the first status that looks done.

AWS Batch applies changes asynchronously and its describes are eventually consistent:
right after an update a describe may still show the old settings with status VALID. So
every wait here checks the *effect* (the settings factory asked for, the queue's order)
together with the status, and polls with a growing interval (0.1 s, 0.2 s, 0.4 s, ... up to
`poll`) until `timeout`. Transient refusals documented by AWS or seen in the field are
retried the same way (`retry_while`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from botocore.exceptions import ClientError

from factory.aws import error_code, error_message
from factory.errors import FactoryError

T = TypeVar("T")


@dataclass(frozen=True)
class Waiter:
    timeout: float = 900.0
    poll: float = 5.0

    def _intervals(self) -> Callable[[], float]:
        state = {"next": min(0.1, self.poll)}

        def step() -> float:
            now = state["next"]
            state["next"] = min(now * 2, self.poll)
            return now

        return step

    def until(self, what: str, check: Callable[[], tuple[bool, str]], hint: str = "run `factory register` again later") -> None:
        """Poll `check` (-> (done, where it stands)) until done; a FactoryError on timeout."""
        deadline = time.monotonic() + self.timeout
        interval = self._intervals()
        while True:
            done, standing = check()
            if done:
                return
            if time.monotonic() > deadline:
                raise FactoryError(f"{what}: still {standing} after {self.timeout:.0f}s; {hint}")
            time.sleep(interval())

    def until_all(self, what: str, names: list[str], check: Callable[[list[str]], dict[str, tuple[bool, str]]], hint: str = "run `factory register` again later") -> None:
        """One wait for many resources of one kind: `check(pending names)` reads them all in
        one describe (name -> (done, where it stands)) and is asked again, about those not
        done yet, until none is left; a FactoryError on timeout naming those still pending."""
        pending = list(dict.fromkeys(names))
        deadline = time.monotonic() + self.timeout
        interval = self._intervals()
        while pending:
            answers = check(pending)
            pending = [n for n in pending if not answers[n][0]]
            if not pending:
                return
            if time.monotonic() > deadline:
                stuck = "; ".join(f"{n} still {answers[n][1]}" for n in pending)
                raise FactoryError(f"{what}: {stuck} after {self.timeout:.0f}s; {hint}")
            time.sleep(interval())

    def retry_while(self, transient: tuple[str, ...], call: Callable[[], T]) -> T:
        """`call()`, again while AWS refuses it with a message containing one of `transient`,
        or with one of them as its error code."""
        deadline = time.monotonic() + self.timeout
        interval = self._intervals()
        while True:
            try:
                return call()
            except ClientError as exc:
                message, code = error_message(exc), error_code(exc)
                if not any(t in message or t == code for t in transient) or time.monotonic() > deadline:
                    raise
            time.sleep(interval())


BATCH_DESCRIBE_NAMES = 100  # DescribeComputeEnvironments and DescribeJobQueues take at most 100 names (Batch API reference)


def until_all_described(
    waiter: Waiter,
    kind: str,
    names: list[str],
    describe: Callable[[list[str]], list[dict[str, Any]]],
    name_key: str,
    standing: Callable[[str, dict[str, Any] | None], tuple[bool, str]],
) -> None:
    """One wait for Batch resources of one `kind`: each round is one describe (at most 100
    names a call) of those not settled yet; `standing(name, described or None)` says
    whether one is and where it stands."""
    if not names:
        return

    def check(pending: list[str]) -> dict[str, tuple[bool, str]]:
        found: dict[str, dict[str, Any]] = {}
        for i in range(0, len(pending), BATCH_DESCRIBE_NAMES):
            for item in describe(pending[i : i + BATCH_DESCRIBE_NAMES]):
                found[item[name_key]] = item
        return {n: standing(n, found.get(n)) for n in pending}

    unique = list(dict.fromkeys(names))
    waiter.until_all(f"{kind} {unique[0]}" if len(unique) == 1 else f"{len(unique)} {kind}s", unique, check)


def batch_standing(kind: str, name: str, found: list[dict[str, Any]], state: str, hint: str = "") -> str | None:
    """Where a Batch resource (compute environment or job queue) stands, from a describe:
    None once it exists, is VALID and in `state`; else what it waits for. INVALID stops
    with Batch's statusReason."""
    if not found:
        return "not visible yet"
    resource = found[0]
    status = resource.get("status")
    if status == "INVALID":
        raise FactoryError(f"{kind} {name} is INVALID: {resource.get('statusReason', 'no reason given')}{hint}")
    if status != "VALID":
        return str(status)
    if resource.get("state") != state:
        return f"{resource.get('state')} (waiting for {state})"
    return None
