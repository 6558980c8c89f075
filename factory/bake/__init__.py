"""The bake: size, render, reuse or build the AMI with Packer, then register it.

Content-addressed: the image's identity (factory.image_identity) is tagged on the AMI and
its snapshots as `factory:image-hash` by Packer when it creates them. A bake first looks
for an available AMI of this account with that tag and reuses it (unless `force`), so an
unchanged task never runs Packer; `bake_all` bakes each distinct image once. The roles end
with the container check (bake_check), whose failure fails the build before any AMI is
made; after every Packer build what Packer left where one of its own AWS calls failed is
removed (factory.packer_leftovers).

One module per job:

    checks (before any instance starts) -> build (prepare, reuse or Packer: bake_task)
      -> distributing (factory.distribute: copies to other regions and accounts)
      -> registration (home, then every region a copy went to),
    many (`bake --all`) -> summary (bake-summary.json).

`result` holds `BakeResult` and its JSON; `images` finds, tags and discards AMIs.
"""

from factory.bake.build import bake_task
from factory.bake.many import bake_all
from factory.bake.result import BakeResult

__all__ = [
    "BakeResult",
    "bake_all",
    "bake_task",
]
