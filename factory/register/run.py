"""One register run's context: its settings, whether it only plans, how it waits and reports."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from factory.aws import aws_errors
from factory.config import FactoryConfig
from factory.register.names import tag_delta
from factory.register.results import Change
from factory.register.waits import Waiter


@dataclass
class Run:
    """The plan *is* the apply run with `dry_run=True`: the same decisions, no mutating call."""

    config: FactoryConfig
    dry_run: bool
    waiter: Waiter
    progress: Callable[[str], None] = field(default=lambda _msg: None)

    def sync_batch_tags(self, batch: Any, resource: str, name: str, arn: str, have: dict[str, str] | None, want: dict[str, str], changes: list[Change]) -> None:
        """Make a Batch resource's factory tags what `want` says: one change, at most two calls."""
        missing, stale, reason = tag_delta(have, want)
        if not missing and not stale:
            return
        changes.append(Change(resource, name, "update", reason))
        if self.dry_run:
            return
        with aws_errors(f"tagging {resource.replace('-', ' ')} {name}"):
            if missing:
                batch.tag_resource(resourceArn=arn, tags=missing)
            if stale:
                batch.untag_resource(resourceArn=arn, tagKeys=stale)
