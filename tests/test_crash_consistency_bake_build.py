"""A bake that dies at any call of Packer's build, up to the AMI's copy, is finished by the
next bake; and a clean bake makes exactly the calls these modules prove (tests/bake_crash.py
says how)."""

from __future__ import annotations

from tests import bake_crash
from tests.bake_crash import AFTER_THE_AMI, BUILD_STEPS, FINISH_STEPS, MUTATING, READS, STAIRCASE

pytestmark = bake_crash.MARKS
lc, clean = bake_crash.lc, bake_crash.clean  # this module's own local cloud and clean bake


def test_the_clean_bake_makes_exactly_the_calls_proven_here(clean):
    calls, _ = clean
    made = list(dict.fromkeys((who, op) for who, op in calls if who in ("packer", "command:bake") and not op.split(":")[1].startswith(READS)))
    assert made == MUTATING, "a bake makes other calls now: prove each (add it to MUTATING)"
    assert sorted(STAIRCASE + AFTER_THE_AMI) == sorted(MUTATING)
    assert BUILD_STEPS + FINISH_STEPS == STAIRCASE and BUILD_STEPS and FINISH_STEPS


def test_bakes_failed_at_each_build_call_in_turn_are_finished_by_the_next_bake(lc, clean, tmp_path):
    _, want = clean
    bake_crash.climb(lc, tmp_path / "build", BUILD_STEPS, want)  # one user's checkout for every bake
