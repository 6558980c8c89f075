"""What each tier needs, from its specs and sizes: no AWS yet."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from factory.errors import FactoryError
from factory.families import FAMILIES, Family
from factory.register.names import TAG_MANAGED, TAG_TIER, resource_name, tasks_tags


@dataclass(frozen=True)
class TierTarget:
    """What one tier needs, from its specs and sizes (no AWS yet)."""

    tier: str
    tasks: tuple[str, ...]
    region: str
    family: Family
    architecture: str
    volume_gib: int
    ami_task: str  # the largest task: its AMI is the tier's
    batch: Any  # factory.spec.BatchSpec
    spec_hash: str  # of the ami_task's spec
    # storage.grow: Docker's own data volume (the root stays the AMI's) and the instance and
    # volume tags the grow agent's IAM policy is scoped to (factory.grow); None without grow.
    grow_volume: dict[str, Any] | None = None
    grow_tags: tuple[dict[str, Any], ...] = ()
    ami_spec: Any = None  # the ami_task's TaskSpec: what its image should hash to now (factory.image_identity.expected_image_hash)
    accelerator: str = "none"  # image.accelerator: "nvidia" makes the environment's image type the family's NVIDIA one

    @property
    def name(self) -> str:
        return resource_name(self.tier)

    @property
    def tags(self) -> dict[str, str]:
        """The tags on the tier's launch template, compute environment and queue."""
        return {TAG_TIER: self.tier, **tasks_tags(self.tasks), TAG_MANAGED: "true"}


def targets_for(specs: Sequence[Any], tiers: Sequence[Any]) -> list[TierTarget]:
    """One TierTarget per tier; the tier's AMI, family and settings are its largest task's."""
    by_name = {s.name: s for s in specs}
    out: list[TierTarget] = []
    for tier in tiers:
        missing = [t for t in tier.tasks if t not in by_name]
        if missing:
            raise FactoryError(f"tier {tier.name} names task(s) {', '.join(missing)} with no spec; run `factory validate specs/`")
        members = [by_name[t] for t in tier.tasks]
        largest = by_name[tier.largest_task]
        for field_name, get in (
            ("region", lambda s: s.region),
            ("image.family", lambda s: s.image.family),
            ("image.architecture", lambda s: s.image.architecture),
            ("image.accelerator", lambda s: s.image.accelerator),
            ("batch", lambda s: s.batch),
        ):
            values = {repr(get(s)) for s in members}
            if len(values) > 1:
                raise FactoryError(
                    f"tier {tier.name} mixes tasks with different {field_name} ({', '.join(tier.tasks)}); "
                    "tasks share a tier only when their tier group matches (a factory.tiers bug)"
                )
        out.append(
            TierTarget(
                tier=tier.name,
                tasks=tuple(sorted(tier.tasks)),
                region=largest.region,
                family=FAMILIES[largest.image.family],
                architecture=largest.image.architecture,
                volume_gib=int(tier.volume_gib),
                ami_task=largest.name,
                batch=largest.batch,
                spec_hash=largest.spec_hash,
                ami_spec=largest,
                accelerator=largest.image.accelerator,
                **_grow(largest, int(tier.volume_gib)),
            )
        )
    return out


def _grow(spec: Any, volume_gib: int) -> dict[str, Any]:
    if getattr(spec.storage, "grow", None) is None:
        return {}
    from factory import grow

    return {"grow_volume": grow.data_volume_mapping(spec, volume_gib), "grow_tags": tuple(grow.launch_template_tags(spec))}
