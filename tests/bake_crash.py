"""A bake that dies at any AWS call is finished by the next bake: what the three
test_crash_consistency_bake_*.py modules share.

tests/test_crash_consistency.py does this for register and prune, one fresh account per
call; these modules do it for `factory bake` on the local cloud, with real Packer and real
Ansible. A clean bake of one task on a fresh account is recorded at the local cloud's end
of the wire, with who made each call (`command:bake`, `packer`). MUTATING lists every
(caller, call) that changes something, in the order a bake makes them;
test_crash_consistency_bake_build.py checks that the clean bake made exactly those, so a
new call (a newer Packer, a new step of factory) fails there until it is proven too.

Then, on a fresh account, a staircase (`climb`): bake k fails at the k-th call of its
steps (that call fails once, `factory local fault OPERATION --caller CALLER`'s mechanism),
and each bake is also the "next run" of the one before it. For every step:

- the bake reaches its own call (the fault is used): it got past where the one before died;
- it exits 1, names the failed call (its AWS error code), and has no traceback.

Then a last bake, after all of them, exits 0 and leaves exactly the clean bake's state:
one AMI with the clean one's tags, its snapshots and no other, no instance left running or
stopped, no key pair or security group left, the same launch template, compute
environment, queue and parameter; a `plan` after it is `unchanged`. So whatever any
failed bake left (a builder, a security group, an AMI half made) is finished or removed
by the bakes after it, and nothing is duplicated.

Why staircases rather than a fresh account per call: a Packer build takes 40-90 s here,
and a fresh account per call costs a faulted bake and a full recovery bake for each of the
17 calls (about 40 minutes); a staircase costs one Packer run per Packer call (cut short
at its fault) and one for the register half, whose calls reuse that AMI. The staircase is
cut in two at the AMI's copy (BUILD_STEPS, FINISH_STEPS), each half on its own account in
its own module, so that `make test` runs them side by side; the first half's last bake
is the next run of its last fault, as the second half's first bake would have been. The
calls after Packer made the finished AMI (AFTER_THE_AMI) are each proven on a fresh
account, since the next bake reuses that AMI and would never reach a later Packer call.
Register's own calls are also proven one by one, each on a fresh account, by
tests/test_crash_consistency.py. Each module prints its runs' times at its end.

The clean bake is made once a session where the order allows (`clean`): a module that
starts after another one made it takes its calls and state, which are the same on any fresh
account of this checkout, rather than baking it again on its own cloud.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from factory.local import cloud as local_cloud
from factory.local.aws import faults
from tests.conftest import REPO

FACTORY = str(Path(sys.executable).with_name("factory"))
TASK = "salmon-quant"
REGION = "us-east-1"
READS = ("Describe", "List", "Get")

# Every call a clean first bake of TASK makes that changes something, in order, by whom
# (Debian's Packer 1.6.6 with encrypt_boot; a modern Packer may differ: see the first test).
MUTATING = [
    ("packer", "ec2:CreateSecurityGroup"),
    ("packer", "ec2:AuthorizeSecurityGroupIngress"),
    ("packer", "ec2:RunInstances"),
    ("packer", "ec2:StopInstances"),
    ("packer", "ec2:CreateImage"),
    ("packer", "ec2:CopyImage"),
    ("packer", "ec2:ModifyImageAttribute"),
    ("packer", "ec2:CreateTags"),
    ("packer", "ec2:DeregisterImage"),
    ("packer", "ec2:DeleteSnapshot"),
    ("packer", "ec2:TerminateInstances"),
    ("packer", "ec2:DeleteSecurityGroup"),
    ("command:bake", "ec2:CreateTags"),
    ("command:bake", "ec2:CreateLaunchTemplate"),
    ("command:bake", "batch:CreateComputeEnvironment"),
    ("command:bake", "batch:CreateJobQueue"),
    ("command:bake", "ssm:PutParameter"),
]
# Proven in turn on one account (each bake also the next run of the one before), and those
# that come after Packer made the finished AMI, each on a fresh account (the next bake
# reuses that AMI, so a later Packer call would never be reached on the same account).
AFTER_THE_AMI = [("packer", "ec2:DeleteSnapshot"), ("packer", "ec2:TerminateInstances"), ("packer", "ec2:DeleteSecurityGroup")]
STAIRCASE = [c for c in MUTATING if c not in AFTER_THE_AMI]
# The staircase in two halves, cut after the AMI's copy: three builds run Ansible in full
# on each side.
CUT = STAIRCASE.index(("packer", "ec2:CopyImage")) + 1
BUILD_STEPS, FINISH_STEPS = STAIRCASE[:CUT], STAIRCASE[CUT:]

needs_local_cloud = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("packer") is None or not Path("/usr/sbin/dockerd").exists(),
    reason="the local cloud needs root, Packer, openssh-server and docker.io (make system-deps)",
)

TIMES: dict[str, float] = {}  # what each run took, printed at the module's end


# Each module's marks, and its fixtures: a module takes `lc` and `clean` by assigning them
# (`lc, clean = bake_crash.lc, bake_crash.clean`); pytest then gives it its own of each
# (module scope), so the three modules run side by side, each on its own local cloud.
MARKS = [pytest.mark.slow, needs_local_cloud]


@pytest.fixture(scope="module")
def lc(tmp_path_factory) -> Iterator[local_cloud.LocalCloud]:
    """One local cloud for the module, its run times said at the end."""
    TIMES.clear()  # a worker may run more than one of the modules
    state = tmp_path_factory.mktemp("bakecrash") / ".factory"
    cloud = local_cloud.up(state, REGION, state_delay=0.2)
    try:
        yield cloud
    finally:
        local_cloud.down(state)
        if TIMES:
            print("\nbake crash-consistency run times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in TIMES.items()))


def fresh(lc) -> set[str]:
    """A new account, as `factory local up` leaves it: nothing of an earlier bake. Returns the
    ids of the snapshots such an account already holds (moto's own), not a bake's."""
    lc.moto.reset()
    faults.clear(lc.endpoint)
    lc.ensure_key_pair(REGION)
    lc.seed_account()
    ec2 = lc.clients(REGION).ec2()
    return {s["SnapshotId"] for p in ec2.get_paginator("describe_snapshots").paginate(OwnerIds=["self"]) for s in p["Snapshots"]}


def factory(lc, *args: str, label: str = "") -> subprocess.CompletedProcess:
    env = dict(os.environ, FACTORY_STATE_DIR=str(lc.state_dir), COLUMNS="200")
    t = time.monotonic()
    proc = subprocess.run([FACTORY, *args], cwd=REPO, capture_output=True, text=True, env=env, timeout=900, check=False)
    if label:
        TIMES[label] = time.monotonic() - t
    return proc


def bake(lc, build: Path, label: str) -> subprocess.CompletedProcess:
    return factory(lc, "bake", TASK, "--cloud", "local", "--build-dir", str(build), label=label)


def state(lc, moto_snapshots: set[str]) -> dict:
    """Every resource a bake makes or may leave, by name, with ids replaced by what they are
    (AMI and snapshot ids differ per run)."""
    clients = lc.clients(REGION)
    ec2, batch = clients.ec2(), clients.batch()

    def pages(client, method, key, **kwargs):
        return [x for p in client.get_paginator(method).paginate(**kwargs) for x in p[key]]

    images = sorted(pages(ec2, "describe_images", "Images", Owners=["self"]), key=lambda i: (i["CreationDate"], i["ImageId"]))
    label = {i["ImageId"]: f"ami#{n}" for n, i in enumerate(images)}
    out: dict = {}
    snapshot_of: dict[str, str] = {}
    for i in images:
        tags = {t["Key"]: t["Value"] for t in i.get("Tags", [])}
        tags["Name"] = re.sub(r"\d{14}$", "<timestamp>", tags.get("Name", ""))
        snaps = [b["Ebs"]["SnapshotId"] for b in i.get("BlockDeviceMappings", []) if b.get("Ebs", {}).get("SnapshotId")]
        snapshot_of.update({s: label[i["ImageId"]] for s in snaps})
        out[label[i["ImageId"]]] = (i["State"], sorted(tags.items()))
    out["snapshots"] = sorted(
        (snapshot_of.get(s["SnapshotId"], "of no AMI"), sorted((t["Key"], t["Value"]) for t in s.get("Tags", []) if t["Key"] != "Name"))
        for s in pages(ec2, "describe_snapshots", "Snapshots", OwnerIds=["self"]) if s["SnapshotId"] not in moto_snapshots
    )
    out["instances not terminated"] = sorted(
        i["State"]["Name"] for r in pages(ec2, "describe_instances", "Reservations") for i in r["Instances"] if i["State"]["Name"] != "terminated"
    )
    out["key pairs"] = sorted(k["KeyName"] for k in ec2.describe_key_pairs()["KeyPairs"])  # DescribeKeyPairs has no paging
    out["security groups"] = sorted(g["GroupName"] for g in pages(ec2, "describe_security_groups", "SecurityGroups"))
    for lt in pages(ec2, "describe_launch_templates", "LaunchTemplates"):
        versions = pages(ec2, "describe_launch_template_versions", "LaunchTemplateVersions", LaunchTemplateId=lt["LaunchTemplateId"])
        out[f"lt:{lt['LaunchTemplateName']}"] = (
            lt["DefaultVersionNumber"],
            sorted((v["VersionNumber"], label.get(v["LaunchTemplateData"].get("ImageId"), "?")) for v in versions),
            sorted((t["Key"], t["Value"]) for t in lt.get("Tags", [])),
        )
    for ce in pages(batch, "describe_compute_environments", "computeEnvironments"):
        cr = ce["computeResources"]
        out[f"ce:{ce['computeEnvironmentName']}"] = (ce["state"], ce["status"], cr["launchTemplate"]["version"], sorted(ce["tags"].items()))
    for q in pages(batch, "describe_job_queues", "jobQueues"):
        out[f"queue:{q['jobQueueName']}"] = (q["state"], q["status"], [o["computeEnvironment"].rsplit("/", 1)[-1] for o in q["computeEnvironmentOrder"]])
    for p in clients.ssm().get_parameters(Names=[f"/factory/{TASK}/ami-id"])["Parameters"]:  # one name: one answer
        out[f"parameter:{p['Name']}"] = label.get(p["Value"], "?")
    return out


def settle() -> None:
    time.sleep(0.5)  # past the local cloud's state delay: DELETING resources are gone


@pytest.fixture(scope="module")
def clean(lc, tmp_path_factory) -> tuple[list, dict]:
    """A clean bake on a fresh account: its calls (caller, operation) and the state it leaves.
    Made once a session where it can be: the first module to make it leaves it in the
    session's shared folder (`CLEAN_FILE`), and a module that starts after that takes it
    from there instead of baking the same clean bake on its own cloud (about 55 s of one
    worker). What it holds is the same on any fresh account of any local cloud of this
    checkout (ids replaced by what they are); a module that finds no file bakes its own."""
    shared = _shared_dir(tmp_path_factory) / CLEAN_FILE
    if shared.is_file():
        made = json.loads(shared.read_text())
        return [tuple(c) for c in made["calls"]], made["want"]
    calls, want = _clean_bake(lc, tmp_path_factory)
    want = plain(want)
    tmp = shared.with_name(f"{shared.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"calls": calls, "want": want}))
    tmp.replace(shared)  # atomic: a module never reads half of it
    return calls, want


CLEAN_FILE = "bake-crash-clean.json"


def _shared_dir(tmp_path_factory) -> Path:
    """A folder of this session that every xdist worker sees: the parent of the workers' own
    base folders (pytest's base folder itself when the session is not distributed). A new
    session starts with a new one, so a clean bake is never taken from another checkout."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def plain(state: dict) -> dict:
    """`state()` as JSON gives it back (tuples as lists): how a shared clean bake's state is
    read, so every state is compared in this form."""
    return json.loads(json.dumps(state))


def _clean_bake(lc, tmp_path_factory) -> tuple[list, dict]:
    moto_snapshots = fresh(lc)
    lc.moto.calls(clear=True)
    proc = bake(lc, tmp_path_factory.mktemp("clean") / "build", "clean bake")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    calls = lc.moto.calls_by()
    settle()
    want = state(lc, moto_snapshots)
    # What the state must hold, said once here so that a wrong "clean" cannot pass.
    amis = [k for k in want if k.startswith("ami#")]
    assert len(amis) == 1, want
    assert dict(want[amis[0]][1])["factory:task"] == TASK and dict(want[amis[0]][1])["factory:image-hash"], want
    assert want["instances not terminated"] == [] and want["security groups"] == ["default"], want
    assert want["key pairs"] == [local_cloud.KEY_PAIR_NAME], want
    assert want["snapshots"] and all(s[0] == amis[0] for s in want["snapshots"]), want
    assert want[f"parameter:/factory/{TASK}/ami-id"] == amis[0], want
    return calls, want


def failed_clearly(proc: subprocess.CompletedProcess) -> str | None:
    """None when a faulted bake failed as it should (exit 1, the AWS error named, no
    traceback) or got past the fault by itself (exit 0: Packer retries some calls);
    else what was wrong."""
    if proc.returncode == 0 or (proc.returncode == 1 and "Traceback" not in proc.stderr and "InjectedFault" in proc.stderr):
        return None
    return f"exit {proc.returncode}, want 1 with a message naming InjectedFault and no traceback (or 0): {proc.stdout[-1500:]}{proc.stderr[-3000:]}"


def finish(lc, build: Path, moto_snapshots: set[str], want: dict, problems: list[str], label: str) -> None:
    again = bake(lc, build, label)
    problems += [] if again.returncode == 0 else [f"{label}: exit {again.returncode}: {again.stdout[-1500:]}{again.stderr[-3000:]}"]
    settle()
    got = plain(state(lc, moto_snapshots))
    wrong = {k: (got.get(k), want.get(k)) for k in sorted(set(got) | set(want)) if got.get(k) != want.get(k)}
    problems += [f"{label} left another state than the clean bake (key: (got, want)): {wrong}"] if wrong else []
    plan = factory(lc, "plan", TASK, "--cloud", "local")
    if plan.returncode != 0 or "unchanged: nothing to do" not in plan.stdout:
        problems.append(f"plan after {label}: {plan.stdout}{plan.stderr}")
    assert not problems, "\n\n".join(problems)




def climb(lc, build: Path, steps: list[tuple[str, str]], want: dict) -> None:
    """A staircase on a fresh account: a bake faulted at each of `steps` in turn, each the
    next run of the one before, then a bake that must leave the clean bake's state."""
    moto_snapshots = fresh(lc)
    problems = []
    for caller, operation in steps:
        step = f"{caller} {operation}"
        faults.arm(lc.endpoint, faults.Fault(operation, "error", caller=caller))
        failed = bake(lc, build, step)
        if faults.armed(lc.endpoint):
            faults.clear(lc.endpoint)
            problems.append(f"{step}: never called (the bake stopped before it: the one before was not finished): {failed.stdout[-1500:]}{failed.stderr[-3000:]}")
        elif failed_clearly(failed):
            problems.append(f"{step}: {failed_clearly(failed)}")
    finish(lc, build, moto_snapshots, want, problems, f"the bake after the staircase's last step ({steps[-1][1]})")
