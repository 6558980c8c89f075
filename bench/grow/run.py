"""Grow benchmark: how fast the net adds space, and the fastest writer it survives.

On the local cloud (moto over HTTP, loop devices for attachments after `--attach-delay`
seconds, the LVM + XFS pool AWS instances run (or `--pool btrfs`), the real agent
process), two measurements:

1. **Add time**: from the agent's trigger to usable space (its `trigger` and `grown`
   events), over the adds a steady writer causes; the agent's own `seconds` (create to
   usable) beside it.
2. **Fastest fill rate survived from a given free space**: the pool is filled until
   `--free-mib` is left (fallocate, instantly), the free-space floor is off, and a writer
   starts at full speed: the net must add space before that free space is gone. Each
   rate in `--rates` is run once; a rate survives when the writer finishes.
   The model says a burst survives when rate <= free / add time.

Writes bench/results/grow.{json,md}. Needs root, loop devices, and lvm2 with xfsprogs
(lvm2's commands come from factory's LVM double where this kernel has no device-mapper)
or, for `--pool btrfs`, btrfs-progs (skips, saying so, without them). The figures are this machine's (a shared disk, sparse loop
files): the add time on AWS is CreateVolume + AttachVolume, see docs/sizing.md.

Run: .venv/bin/python bench/grow/run.py   (or `make bench`)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(REPO))

RESULTS = REPO / "bench" / "results"
MIB = 1024**2


def missing(pool: str) -> str | None:
    if os.geteuid() != 0:
        return "needs root (loop devices, mounts)"
    tools = ("mkfs.btrfs", "btrfs") if pool == "btrfs" else ("pvcreate", "mkfs.xfs", "xfs_growfs")
    for tool in ("losetup", *tools):
        if not shutil.which(tool):
            return f"needs {tool} (make system-deps)"
    return None


def stamp(e: dict) -> float:
    return datetime.datetime.fromisoformat(e["time"].replace("Z", "+00:00")).timestamp()


def add_times(endpoint: str, work: Path, attach_delay: float, pool: str) -> dict:
    from factory.local.instance.grow_rig import GrowRig

    with GrowRig.start(endpoint, work / "adds", data_gib=2, attach_delay=attach_delay, pool=pool,
                       settings={"min_step_gib": 1, "step_seconds": 5}) as rig:
        rig.start_agent()
        rig.wait_event("start")
        done = rig.write(4096, 150)
        events = rig.events()
    triggers = [e for e in events if e["event"] == "trigger"]
    grown = [e for e in events if e["event"] == "grown"]
    spans = [round(stamp(g) - stamp(t), 2) for t, g in zip(triggers, grown)]
    return {
        "writer_finished": done.returncode == 0,
        "adds": len(grown),
        "trigger_to_usable_s": spans,
        "agent_add_s": [g["seconds"] for g in grown],
        "median_trigger_to_usable_s": round(statistics.median(spans), 2) if spans else None,
        "max_trigger_to_usable_s": max(spans) if spans else None,
    }


def burst(endpoint: str, work: Path, attach_delay: float, free_mib: int, rate: float, add_seconds: float, pool: str) -> dict:
    from factory.local.instance.grow_rig import GrowRig

    with GrowRig.start(endpoint, work / f"burst-{int(rate)}", data_gib=2, attach_delay=attach_delay, pool=pool,
                       settings={"floor_gib": 0, "floor_fraction": 0, "add_seconds": add_seconds, "min_step_gib": 4}) as rig:
        fill = rig.free_bytes() - free_mib * MIB
        rig.run("fallocate", "-l", str(fill), str(rig.mountpoint / "filled.bin"))
        start_free = rig.free_bytes()
        rig.start_agent()
        rig.wait_event("start")
        # One add (at least 4 GiB) covers the rest of the writing: only the first reaction is measured.
        done = rig.write(free_mib + 1024, rate)
        grown = [e for e in rig.events() if e["event"] == "grown"]
    return {"rate_mib_s": rate, "free_mib_at_start": round(start_free / MIB), "survived": done.returncode == 0,
            "adds": len(grown), "writer": (done.stdout or done.stderr).strip()[-120:]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--attach-delay", type=float, default=1.0, help="seconds before an attached volume's device appears")
    ap.add_argument("--free-mib", type=int, default=768, help="free space when the burst starts")
    ap.add_argument("--rates", default="50,100,200,400", help="MiB/s, comma-separated")
    ap.add_argument("--repeats", type=int, default=2, help="runs per rate (this machine's disk is shared: runs vary)")
    ap.add_argument("--pool", choices=["lvm-xfs", "btrfs"], default="lvm-xfs", help="the pool's backend (AWS instances run lvm-xfs)")
    args = ap.parse_args()
    why = missing(args.pool)
    if why:
        print(f"bench/grow: skipped: {why}")
        return 0

    from factory.local.aws.moto_server import MotoServer

    server = MotoServer.start()
    work = Path(tempfile.mkdtemp(prefix="factory-bench-grow-"))
    try:
        adds = add_times(server.endpoint, work, args.attach_delay, args.pool)
        plan_s = max(adds["max_trigger_to_usable_s"] or 2.0, 2.0)
        bursts = [burst(server.endpoint, work, args.attach_delay, args.free_mib, float(r), plan_s, args.pool)
                  for r in args.rates.split(",") for _ in range(args.repeats)]
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)

    # The fastest rate at which every run survived.
    rates = sorted({b["rate_mib_s"] for b in bursts})
    survived = [r for r in rates if all(b["survived"] for b in bursts if b["rate_mib_s"] == r)]
    result = {
        "attach_delay_s": args.attach_delay,
        "pool": args.pool,
        "add": adds,
        "burst": {"free_mib": args.free_mib, "runs": bursts, "fastest_survived_mib_s": max(survived) if survived else None,
                  "model_mib_s": round(args.free_mib / plan_s, 1)},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "grow.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Grow benchmark (local cloud)",
        "",
        f"Pool {args.pool}. Attach delay {args.attach_delay:g} s. Adds: {adds['adds']}, trigger to usable space "
        f"median {adds['median_trigger_to_usable_s']} s, max {adds['max_trigger_to_usable_s']} s "
        f"(agent's create-to-usable: {adds['agent_add_s']}).",
        "",
        f"Burst from {args.free_mib} MiB free, floor off: free / add time is {result['burst']['model_mib_s']} MiB/s; "
        "the free-space signal's lag (docs/sizing.md) is not in that figure.",
        "",
        f"Fastest rate every run survived: {result['burst']['fastest_survived_mib_s']} MiB/s.",
        "",
        "| rate MiB/s | free at start MiB | survived | adds | writer |",
        "| ---: | ---: | --- | ---: | --- |",
    ] + [f"| {b['rate_mib_s']:g} | {b['free_mib_at_start']} | {'yes' if b['survived'] else 'no'} | {b['adds']} | {b['writer']} |"
         for b in bursts]
    (RESULTS / "grow.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
