"""`factory iam-policy` proven against every AWS call the suite made (named zz_ to run last).

Each local cloud of the session appended its calls, with who made them, to one file
(tests/conftest.py): calls by a `factory` command (its user agent names it), by Packer
(run by `factory bake`), by the local cloud's own set-up, or by the tests themselves.
- Every call of a command (and of Packer) must be allowed by that command's policies, and
  every call a build host made with its instance profile (`builder`) by the builder's
  instance policy (factory.iam.builder_instance_policy).
- On a run of the whole suite, every policy action must have been called by a command
  that needs it, unless factory.iam.IMPLIED says why it is not an API call of ours.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict

import pytest

from factory import iam

# Under pytest-xdist other files still run beside this one: `make test` runs it after them.
pytestmark = pytest.mark.skipif(bool(os.environ.get("PYTEST_XDIST_WORKER")),
                                reason="the IAM proof reads every other test's calls: run it after them (make test does)")


def recorded(config) -> dict[str, set[str]]:
    by_caller: dict[str, set[str]] = defaultdict(set)
    for line in config.factory_call_log.read_text().splitlines():
        caller, _, action = line.partition("\t")
        by_caller[caller].add(action)
    return by_caller


def test_every_call_a_command_made_is_in_its_policy(request):
    calls = recorded(request.config)
    commands = {c.split(":", 1)[1]: acts for c, acts in calls.items() if c.startswith("command:")}
    if not commands and "packer" not in calls:
        pytest.skip("no factory command reached a local cloud in this run")
    unmapped = sorted(c for c in commands if c not in iam.COMMAND_PURPOSES and c not in ("up", "down", "status", "fault"))
    assert not unmapped, f"commands that call AWS but have no policy: {unmapped}; add them to factory.iam.COMMAND_PURPOSES"
    missing = {c: sorted(acts - iam.needed_by(c)) for c, acts in commands.items() if c in iam.COMMAND_PURPOSES}
    missing["packer (factory bake)"] = sorted(calls.get("packer", set()) - iam.actions("bake"))
    assert not any(missing.values()), f"called but not in the policy: {json.dumps({k: v for k, v in missing.items() if v})}"


def builder_actions() -> set[str]:
    return {a for s in iam.builder_instance_policy()["Statement"] for a in s["Action"]}


def test_every_call_the_builder_made_is_in_its_instance_policy(request):
    calls = recorded(request.config).get("builder", set())
    if not calls:
        pytest.skip("no build host called AWS with its instance profile in this run")
    assert calls <= builder_actions() - set(iam.AT_THE_REGISTRY), sorted(calls - builder_actions())


def test_every_policy_action_was_called(request):
    if not request.config.factory_whole_suite:
        pytest.skip("only a run of the whole suite calls everything; this run chose tests")
    calls = recorded(request.config)
    never: dict[str, list[str]] = {}
    for purpose in iam.PURPOSES:
        callers = [c for c, ps in iam.COMMAND_PURPOSES.items() if purpose in ps]
        seen = set().union(*(calls.get(f"command:{c}", set()) for c in callers))
        if purpose == "bake":
            seen |= calls.get("packer", set())
        never[purpose] = sorted(iam.actions(purpose) - seen - set(iam.IMPLIED))
    # the builder's instance role: its API calls here, the pulls' at the registry double
    # (tests/test_bake_check_ecr.py)
    never["builder instance role"] = sorted(builder_actions() - calls.get("builder", set()) - set(iam.AT_THE_REGISTRY))
    never = {p: acts for p, acts in never.items() if acts}
    assert not never, f"in the policy but never called in the suite (remove them, or test the path that calls them): {json.dumps(never)}"


def test_the_cli_prints_the_policies(cli):
    r = cli("iam-policy", "--for", "register", "--json")
    assert r.exit_code == 0
    doc = json.loads(r.stdout)
    assert doc["Version"] == "2012-10-17" and {a for s in doc["Statement"] for a in s["Action"]} == iam.actions("register")
    everything = json.loads(cli("iam-policy", "--json").stdout)
    assert set(everything) == set(iam.PURPOSES)
    text = cli("iam-policy").stdout
    assert "iam:CreateServiceLinkedRole" in text and "allowed though factory never calls them itself" in text
    bad = cli("iam-policy", "--for", "everything")
    assert bad.exit_code == 2 and "--for must be one of" in bad.stderr
