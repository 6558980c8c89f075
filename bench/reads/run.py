"""How long the reads of `factory status` and of an unchanged `factory bake --all` take,
and how many AWS calls they make, as the number of specs grows (issue 12 point 6).

On a fresh local cloud in a temporary state folder: N specs (copies of salmon-quant under
other names, with different inputs, so they spread over several tiers), an AMI for each
distinct image tagged as a bake tags it (no Packer: the reads are measured, not the
build), every tier registered. Then, for each N, `status` and `bake --all` (every AMI
reused, nothing to change) through the core, timed, and the AWS calls each made, from
the local cloud's call log (`/_factory/calls`): a first bake --all, which renders every
build folder, and the next, which finds them rendered; then `factory status` and
`factory bake --all` through the CLI, as a user runs them. The local cloud pages at 100
here, as AWS Batch does, so the count is of rounds, not of the two-item pages the tests
use to prove paging. Writes bench/results/reads.{json,md}. Goal: 100 specs under 2 s.

The bases come from the lock (`factory lock` is run once after the set-up, into the local
cloud's own lock), so an unchanged bake --all reads the lock and makes one DescribeImages of
the locked bases per region, no SSM call. Issue 21's goal: the CLI's `factory bake --all`
of 100 unchanged specs takes at most 3 times `factory validate` of the same specs, timed
side by side here (`bake/validate` in the table).

    .venv/bin/python bench/reads/run.py [N ...]     default: 3 25 100
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

TEMPLATE = "salmon-quant"
REGION = "us-east-1"
GOAL_SECONDS = 2.0  # 100 unchanged specs (issue 12 point 6)
GOAL_RATIO = 3.0  # CLI bake --all of unchanged specs / CLI validate of the same specs (issue 21)
TIERS = 8  # distinct input sizes among the specs: tiers as a user's specs spread
PAGE_SIZE = 100  # pages as AWS Batch does (the other tests page at 2 to prove paging; here the count is of rounds)


def write_specs(folder: Path, n: int) -> list[str]:
    """N specs named task-000 ... in `folder`, over TIERS input sizes."""
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    shutil.copytree(REPO / "specs" / "benchmarks", folder / "benchmarks", dirs_exist_ok=True)
    doc = (REPO / "specs" / f"{TEMPLATE}.yaml").read_text()
    names = []
    for i in range(n):
        name = f"task-{i:03d}"
        text = doc.replace(f"name: {TEMPLATE}", f"name: {name}").replace("max_input_gib: 20", f"max_input_gib: {20 + 10 * (i % TIERS)}")
        (folder / f"{name}.yaml").write_text(text)
        names.append(name)
    return names


def baked_like_factory(lc, specs) -> dict[str, str]:
    """task -> an AMI tagged as a bake tags it, one per distinct image (as bake_all shares them)."""
    from factory.cloud import Cloud
    from factory.image_identity import IMAGE_HASH_TAG, expected_image_hash
    from factory.render import resolve_base_ami

    clients = lc.clients(REGION)
    ec2 = clients.ec2()
    target = Cloud("local", lc).image_target(REGION)
    by_hash: dict[str, str] = {}
    out = {}
    for spec in specs:
        base = resolve_base_ami(spec, clients)
        digest = expected_image_hash(spec, base, target)
        if digest not in by_hash:
            instance = ec2.run_instances(ImageId=base, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
            ami = ec2.create_image(InstanceId=instance, Name=f"factory-{spec.name}-{time.time_ns()}")["ImageId"]
            tags = {"factory:task": spec.name, "factory:spec-hash": spec.spec_hash, IMAGE_HASH_TAG: digest, "factory:base-ami": base}
            ec2.create_tags(Resources=[ami], Tags=[{"Key": k, "Value": v} for k, v in tags.items()])
            ec2.terminate_instances(InstanceIds=[instance])
            by_hash[digest] = ami
        out[spec.name] = by_hash[digest]
    return out


def measure(lc, specs_dir: Path, build_root: Path) -> dict[str, object]:
    from factory import base_lock
    from factory.bake import bake_all
    from factory.cloud import Cloud
    from factory.config import load_config
    from factory.spec import load_specs
    from factory.status import task_status

    row: dict[str, object] = {}
    for label, fn in (
        ("status", lambda specs, cloud: task_status(specs, specs, cloud, load_config(None))),
        # The first bake renders every build folder; the next finds them as rendered (the
        # unchanged `bake --all` a user or the weekly workflow runs).
        ("first bake --all", lambda specs, cloud: bake_all(specs, cloud, build_root=build_root, lock=base_lock.load(base_lock.default_path(cloud)))),
        ("bake --all", lambda specs, cloud: bake_all(specs, cloud, build_root=build_root, lock=base_lock.load(base_lock.default_path(cloud)))),
    ):
        lc.moto.calls(clear=True)
        t = time.monotonic()
        specs = load_specs([specs_dir])
        result = fn(specs, Cloud("local", lc))
        seconds = time.monotonic() - t
        calls = lc.moto.calls()
        if label.endswith("bake --all"):
            statuses = Counter(r.status for r in result)
            assert set(statuses) == {"reused"}, f"bake --all of unchanged specs: {statuses} ({[r.error for r in result if r.error][:1]})"
        else:
            assert not result.stale, [t.stale for t in result.stale][:1]
        row[label] = {"seconds": round(seconds, 3), "calls": len(calls), "by_operation": dict(Counter(calls).most_common())}
    # The same through the CLI, as a user runs it (start-up, loading the specs, printing).
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["FACTORY_STATE_DIR"] = str(lc.state_dir)
    env["PYTHONPATH"] = str(REPO)  # this checkout's factory, whichever is installed
    for label, args in (
        ("factory validate", ["validate", str(specs_dir), "--json"]),
        ("factory status", ["status", "--cloud", "local", "--specs-dir", str(specs_dir), "--json"]),
        ("factory bake --all", ["bake", "--all", "--cloud", "local", "--specs-dir", str(specs_dir), "--build-dir", str(build_root), "--json"]),
    ):
        lc.moto.calls(clear=True)
        t = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "factory", *args], env=env, capture_output=True, text=True, timeout=900, check=False)
        seconds = time.monotonic() - t
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        row[label] = {"seconds": round(seconds, 3), "calls": len(lc.moto.calls())}
        if label == "factory bake --all":
            # The bases come from the lock: the only SSM reads are the registration's, of the
            # tasks' /factory/<task>/ami-id parameters, ten to a GetParameters call.
            made = Counter(lc.moto.calls())
            n_specs = len(list(specs_dir.glob("*.yaml")))
            assert made["ssm:GetParameter"] == 0 and made["ssm:GetParameters"] == -(-n_specs // 10), made
    row["bake/validate"] = round(row["factory bake --all"]["seconds"] / max(row["factory validate"]["seconds"], 1e-6), 2)
    return row


def main(argv: list[str]) -> int:
    from factory import base_lock
    from factory.cloud import Cloud
    from factory.local import cloud as local_cloud
    from factory.register import register_tasks
    from factory.spec import load_specs

    counts = [int(a) for a in argv] or [3, 25, 100]
    work = Path(tempfile.mkdtemp(prefix="factory-bench-reads-"))
    lc = local_cloud.up(work / "state", REGION, page_size=PAGE_SIZE)
    os.environ.update(lc.env(REGION))
    rows = []
    try:
        for n in counts:
            lc.moto.reset()
            lc.seed_account()
            specs_dir = work / f"specs-{n}"
            write_specs(specs_dir, n)
            specs = load_specs([specs_dir])
            t = time.monotonic()
            amis = baked_like_factory(lc, specs)
            register_tasks(specs, lc.clients(REGION), amis, all_specs=specs, poll=0.2)
            lock = base_lock.BaseLock(base_lock.default_path(Cloud("local", lc)))  # `factory lock --cloud local`
            base_lock.lock_bases(specs, Cloud("local", lc), lock)
            lock.save()
            setup = time.monotonic() - t
            row = {"specs": n, "setup_s": round(setup, 1), **measure(lc, specs_dir, work / f"build-{n}")}
            rows.append(row)
            print(f"{n:4d} specs: status {row['status']['seconds']:.2f} s, {row['status']['calls']} calls; "
                  f"first bake --all {row['first bake --all']['seconds']:.2f} s; "
                  f"bake --all {row['bake --all']['seconds']:.2f} s, {row['bake --all']['calls']} calls; "
                  f"CLI: factory validate {row['factory validate']['seconds']:.2f} s, factory status {row['factory status']['seconds']:.2f} s, "
                  f"factory bake --all {row['factory bake --all']['seconds']:.2f} s ({row['bake/validate']:.1f}x validate)",
                  flush=True)
    finally:
        local_cloud.down(work / "state")
        shutil.rmtree(work, ignore_errors=True)
    write_results(rows)
    return 0


def write_results(rows: list[dict]) -> None:
    out = REPO / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "reads.json").write_text(json.dumps({"goal_s_at_100": GOAL_SECONDS, "goal_bake_over_validate": GOAL_RATIO, "rows": rows}, indent=2) + "\n")
    lines = ["# Reads of status and an unchanged bake --all (local cloud)", "",
             f"Goal: 100 unchanged specs in under {GOAL_SECONDS:g} s. The first bake --all renders every build folder;",
             "`bake --all` is the next one, nothing changed. AWS calls from the local cloud's call log, pages of 100.", "",
             "The CLI columns run `factory validate`, `factory status` and `factory bake --all` as a user does (start-up, loading the specs,",
             f"output); the bases come from the lock. Goal (issue 21): CLI bake --all at most {GOAL_RATIO:g}x CLI validate of the same specs.", "",
             "| specs | status s | status AWS calls | first bake --all s | bake --all s | bake --all AWS calls | CLI validate s | CLI status s | CLI bake --all s | bake/validate |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['specs']} | {r['status']['seconds']:.2f} | {r['status']['calls']} | {r['first bake --all']['seconds']:.2f} "
                     f"| {r['bake --all']['seconds']:.2f} | {r['bake --all']['calls']} | {r['factory validate']['seconds']:.2f} "
                     f"| {r['factory status']['seconds']:.2f} | {r['factory bake --all']['seconds']:.2f} | {r['bake/validate']:.1f}x |")
    for r in rows[-1:]:
        for label in ("status", "bake --all"):
            lines += ["", f"AWS calls of `{label}` at {r['specs']} specs: " + ", ".join(f"{k} {v}" for k, v in r[label]["by_operation"].items())]
    (out / "reads.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
