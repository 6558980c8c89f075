"""What each local bake made, kept per AMI id: the file tree an instance of that AMI boots.

On AWS an AMI is its snapshots: every instance launched from it starts from the disk the
bake left. moto keeps only the AMI's record, so the local cloud keeps the disk: when a
bake on the local cloud ends, the build host's overlay upper directory (every file the
roles created, changed or removed, as overlayfs records it, whiteouts included) is copied
to `<state_dir>/amis/<ami-id>/`. A local instance of that AMI (factory.local.instance.instances)
mounts it over this machine's `/`, as the build host's own root was mounted.

A tree goes when its AMI is deregistered (the local cloud's AWS layer drops it on a
successful DeregisterImage, and `prune()` drops any whose AMI moto no longer has), so the
store never holds a disk no AMI points at.

    trees = AmiTrees(state_dir)
    trees.keep("ami-123", host.upper_dir)
    trees.tree("ami-123")          # Path, or None when that AMI was not baked here
    trees.drop("ami-123")
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from factory.errors import LocalCloudError

DIRECTORY = "amis"
_AMI_ID = re.compile(r"^ami-[0-9a-f]{8,17}$")


class AmiTrees:
    def __init__(self, state_dir: Path):
        self.root = Path(state_dir).absolute() / DIRECTORY

    def _path(self, ami_id: str) -> Path:
        if not _AMI_ID.match(ami_id):
            raise LocalCloudError(f"{ami_id!r} is not an AMI id")
        return self.root / ami_id

    def keep(self, ami_id: str, upper_dir: Path) -> Path:
        """Copy a bake's upper directory as AMI `ami_id`'s tree (atomically: a half copy is never a tree)."""
        dest = self._path(ami_id)
        tmp = dest.with_name(dest.name + ".partial")
        self.root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        # cp -a keeps what overlayfs needs in a lower layer: whiteouts (0/0 character
        # devices), trusted.overlay.* attributes (opaque directories), owners and modes.
        done = subprocess.run(["cp", "-a", "--reflink=auto", str(upper_dir), str(tmp)], capture_output=True, text=True)
        if done.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise LocalCloudError(f"could not keep the tree of {ami_id}: {done.stderr.strip()}")
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
        return dest

    def tree(self, ami_id: str) -> Path | None:
        path = self._path(ami_id)
        return path if path.is_dir() else None

    def ami_ids(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and _AMI_ID.match(p.name))

    def drop(self, ami_id: str) -> bool:
        path = self._path(ami_id)
        if not path.exists():
            return False
        shutil.rmtree(path, ignore_errors=True)
        return True

    def prune(self, ec2: Any) -> list[str]:
        """Drop the trees whose AMI moto no longer has (deregistered while no layer watched)."""
        kept = self.ami_ids()
        if not kept:
            return []
        # Filtered by the ids kept (one page each way: paged anyway for safety).
        have: set[str] = set()
        for page in ec2.get_paginator("describe_images").paginate(Owners=["self"], Filters=[{"Name": "image-id", "Values": kept}]):
            have |= {i["ImageId"] for i in page["Images"]}
        gone = [a for a in kept if a not in have]
        for ami_id in gone:
            self.drop(ami_id)
        return gone
