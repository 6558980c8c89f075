"""What a bake reports: `BakeResult` (one task's AMI, how it came about, its registration)
and its JSON; `StepCallback`, the progress a bake reports as it goes; `_join`, a result's
notes one after another."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

StepCallback = Callable[[str, str], None]  # (task, step text)


@dataclass
class BakeResult:
    task: str
    ami_id: str | None
    region: str
    base_ami: str | None
    spec_hash: str
    image_hash: str | None
    baked: bool
    volume_gib: int | None
    status: str = "baked"  # baked | reused | shared | failed
    reused_from: str | None = None  # the task whose bake made the reused AMI
    build_dir: str | None = None
    log: str | None = None
    seconds: float = 0.0
    steps: dict[str, float] = field(default_factory=dict)
    launch_template: dict[str, Any] | None = None
    compute_environment: str | None = None
    job_queue: str | None = None
    registered: bool = False
    note: str | None = None
    error: str | None = None
    # A failure shared by every task of the run (registration across all tiers): kept out
    # of `error`, so a summary says it once rather than once per task.
    shared_error: str | None = None
    image_manifest: str | None = None  # the fetched build/<task>/image-manifest.json
    copies: list[dict[str, Any]] | None = None  # distribution: per region (and account) the AMI there

    def to_json(self) -> dict[str, Any]:
        data = {
            "task": self.task,
            "ami_id": self.ami_id,
            "region": self.region,
            "base_ami": self.base_ami,
            "spec_hash": self.spec_hash,
            "image_hash": self.image_hash,
            "baked": self.baked,
            "volume_gib": self.volume_gib,
            "status": self.status,
            "reused_from": self.reused_from,
            "build_dir": self.build_dir,
            "log": self.log,
            "seconds": round(self.seconds, 2),
            "steps": {k: round(v, 2) for k, v in self.steps.items()},
            "registered": self.registered,
            "launch_template": self.launch_template,
            "compute_environment": self.compute_environment,
            "job_queue": self.job_queue,
            "image_manifest": self.image_manifest,
        }
        if self.copies is not None:
            data["copies"] = self.copies
        if self.note:
            data["note"] = self.note
        if self.error:
            data["error"] = self.error
        return data


def _join(a: str | None, b: str) -> str:
    return f"{a}; {b}" if a else b
