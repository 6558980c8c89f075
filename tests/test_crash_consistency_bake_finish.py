"""A bake that dies at any call after the AMI's copy (Packer finishing the image, then
factory registering it) is finished by the next bake (tests/bake_crash.py says how)."""

from __future__ import annotations

from tests import bake_crash
from tests.bake_crash import FINISH_STEPS

pytestmark = bake_crash.MARKS
lc, clean = bake_crash.lc, bake_crash.clean  # this module's own local cloud and clean bake


def test_bakes_failed_at_each_later_call_in_turn_are_finished_by_the_next_bake(lc, clean, tmp_path):
    _, want = clean
    bake_crash.climb(lc, tmp_path / "build", FINISH_STEPS, want)  # one user's checkout for every bake
