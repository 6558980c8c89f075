"""Distribution of a baked AMI to other regions and accounts (factory.yaml `distribute:`,
a spec's over it; the settings and the checks before a bake are factory.distribution).

One module per job:

    keys (each region's KMS key: there, customer-managed, enabled)
      -> copies (CopyImage into a region, found again by its tags, waited for, a failed one discarded)
      -> sharing (launch permissions, the snapshots' tags and createVolumePermission, per region)
      -> run (`distribute_image`: every region in parallel; `DistributionResult`).
"""

from factory.distribute.run import DistributionResult, distribute_image

__all__ = ["DistributionResult", "distribute_image"]
