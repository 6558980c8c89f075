"""A bake that dies at any call after the AMI's copy (Packer finishing the image, then
factory registering it) is finished by the next bake (tests/bake_crash.py says how)."""

from __future__ import annotations

import pytest

from tests import bake_crash
from tests.bake_crash import FINISH_STEPS

pytestmark = [pytest.mark.slow, bake_crash.needs_local_cloud]


@pytest.fixture(scope="module")
def lc(tmp_path_factory):
    yield from bake_crash.local_cloud_for_module(tmp_path_factory)


@pytest.fixture(scope="module")
def clean(lc, tmp_path_factory):
    return bake_crash.clean_bake(lc, tmp_path_factory)


def test_bakes_failed_at_each_later_call_in_turn_are_finished_by_the_next_bake(lc, clean, tmp_path):
    _, want = clean
    bake_crash.climb(lc, tmp_path / "build", FINISH_STEPS, want)  # one user's checkout for every bake
