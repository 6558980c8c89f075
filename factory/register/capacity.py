"""How many tiers an account can hold in a region, under AWS Batch's fixed quotas.

AWS Batch allows 50 compute environments and 50 job queues per region, and these quotas
cannot be raised (Batch User Guide, "AWS Batch service quotas"). A tier is one environment
and one queue, and a blue/green replacement needs a second environment for a while, so a
region holds at most 49 tiers (factory.tiers.REGION_TIERS: what `factory size` plans for),
fewer when the account has other environments or queues there. register counts them before
it creates anything and chooses as many tiers as fit (register.tier_choice, which records
the choice for the other commands); when not even one fits it refuses up front, rather than
failing at the 51st create half way through.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from factory.errors import FactoryError
from factory.register.names import TAG_MANAGED, TAG_TIER
from factory.register.region_reads import RegionReads
from factory.tiers import BATCH_ENVIRONMENTS_PER_REGION, BATCH_QUEUES_PER_REGION, REPLACEMENT_ROOM


@dataclass(frozen=True)
class Capacity:
    region: str
    environments: int  # compute environments of the region that are not these tiers'
    queues: int  # job queues of the region that are not these tiers'

    @property
    def tiers(self) -> int:
        """How many tiers fit beside what the account already has (one environment kept free
        for a blue/green replacement)."""
        return max(0, min(BATCH_ENVIRONMENTS_PER_REGION - REPLACEMENT_ROOM - self.environments, BATCH_QUEUES_PER_REGION - self.queues))

    def text(self, wanted: int) -> str:
        return (
            f"{self.region}: the account can hold {self.tiers} tier{'s' if self.tiers != 1 else ''} (AWS Batch allows "
            f"{BATCH_ENVIRONMENTS_PER_REGION} compute environments and {BATCH_QUEUES_PER_REGION} job queues per region, a quota that "
            f"cannot be raised; {self.environments} environment{'s' if self.environments != 1 else ''} and {self.queues} "
            f"queue{'s' if self.queues != 1 else ''} there are not these tiers'; {REPLACEMENT_ROOM} environment kept free for a "
            f"blue/green replacement); these specs use {wanted}"
        )


def _ours(tags: dict[str, str] | None, tiers: Collection[str]) -> bool:
    tags = tags or {}
    return tags.get(TAG_MANAGED) == "true" and tags.get(TAG_TIER) in tiers


def of(reads: RegionReads, region: str, tiers: Collection[str]) -> Capacity:
    """The region's capacity for `tiers` (names): everything else there takes room."""
    environments = [c for c in reads.compute_environments() if c.get("status") != "DELETED"]
    queues = list(reads.queues().values())
    return Capacity(
        region,
        environments=sum(1 for c in environments if not _ours(c.get("tags"), tiers)),
        queues=sum(1 for q in queues if not _ours(q.get("tags"), tiers)),
    )


def check(capacity: Capacity, wanted: int) -> None:
    """A clear refusal, before any create, when `wanted` tiers do not fit."""
    if wanted <= capacity.tiers:
        return
    raise FactoryError(
        f"{capacity.text(wanted)}. Fix: delete compute environments and job queues the account no longer needs there, "
        "or run `factory prune --apply` to retire tiers no spec uses"
    )
