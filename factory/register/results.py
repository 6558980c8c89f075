"""What a register or prune run decided and did, per resource, for the CLI and `--json`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Change:
    """One resource's decision: action is create | update | replace | delete | unchanged | failed."""

    resource: str  # launch-template | compute-environment | job-queue | ami | ...
    name: str
    action: str
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"resource": self.resource, "name": self.name, "action": self.action, "reason": self.reason}


@dataclass(frozen=True)
class Network:
    region: str
    source: str  # "config FILE" | "default VPC vpc-... (region)"
    subnets: tuple[str, ...]
    security_groups: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"region": self.region, "source": self.source, "subnets": list(self.subnets), "security_groups": list(self.security_groups)}


@dataclass
class TierResult:
    tier: str
    tasks: tuple[str, ...]
    region: str
    ami_id: str
    ami_source: str
    volume_gib: int
    launch_template: dict[str, Any]  # name, id, version
    compute_environment: str
    job_queue: str
    network: Network
    changes: list[Change] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return any(c.action != "unchanged" for c in self.changes)

    def task_json(self) -> dict[str, Any]:
        """The keys `bake --json` and `register --json` add for a task of this tier."""
        return {
            "tier": self.tier,
            "ami_id": self.ami_id,
            "launch_template": {"name": self.launch_template["name"], "version": self.launch_template["version"]},
            "compute_environment": self.compute_environment,
            "job_queue": self.job_queue,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            **self.task_json(),
            "tasks": list(self.tasks),
            "region": self.region,
            "ami_source": self.ami_source,
            "volume_gib": self.volume_gib,
            "launch_template": dict(self.launch_template),
            "network": self.network.to_json(),
            "changes": [c.to_json() for c in self.changes],
            "notes": list(self.notes),
            "status": "changed" if self.changed else "unchanged",
        }


@dataclass
class RegisterResult:
    tiers: list[TierResult]
    dry_run: bool
    config_source: str
    notes: list[str] = field(default_factory=list)  # about the run as a whole (the account's capacity)

    @property
    def changed(self) -> bool:
        return any(t.changed for t in self.tiers)

    def for_task(self, task: str) -> TierResult:
        for t in self.tiers:
            if task in t.tasks:
                return t
        raise KeyError(task)

    def to_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "config": self.config_source,
            "status": "changed" if self.changed else "unchanged",
            "tiers": [t.to_json() for t in self.tiers],
            "notes": list(self.notes),
            "tasks": {task: t.task_json() for t in self.tiers for task in t.tasks},
        }
