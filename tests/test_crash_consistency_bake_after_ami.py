"""A bake that dies at one of Packer's calls after the finished AMI is made (its cleanup)
is finished by the next bake, each on a fresh account (tests/bake_crash.py says why)."""

from __future__ import annotations

import pytest

from factory.local.aws import faults
from tests import bake_crash
from tests.bake_crash import AFTER_THE_AMI

pytestmark = bake_crash.MARKS
lc, clean = bake_crash.lc, bake_crash.clean  # this module's own local cloud and clean bake


@pytest.mark.parametrize("caller, operation", AFTER_THE_AMI, ids=[o for _, o in AFTER_THE_AMI])
def test_a_bake_failed_after_its_ami_is_made_is_finished_by_the_next_bake(lc, clean, tmp_path, caller, operation):
    """The AMI the faulted bake made is reused by the next one."""
    _, want = clean
    build = tmp_path / "build"
    moto_snapshots = bake_crash.fresh(lc)
    faults.arm(lc.endpoint, faults.Fault(operation, "error", caller=caller))
    failed = bake_crash.bake(lc, build, f"{caller} {operation}")
    assert faults.armed(lc.endpoint) == [], f"{operation} was never called: {failed.stdout}{failed.stderr}"
    wrong = bake_crash.failed_clearly(failed)
    problems = [f"{caller} {operation}: {wrong}"] if wrong else []
    bake_crash.finish(lc, build, moto_snapshots, want, problems, f"the bake after {caller} {operation}")
