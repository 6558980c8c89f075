"""How long a local bake takes, step by step: the `make demo` budget (under two minutes).

Runs the real chain for one task on a fresh local cloud in a temporary state folder:
cloud up, validate, size, render (base AMI from moto's SSM), packer validate, packer
build (real Packer, real Ansible on the throwaway build host, the container check),
register (launch template, compute environment, queue in moto), a second bake (reused,
no Packer), cloud down. Prints a table and writes bench/results/bake.json.

    .venv/bin/python bench/bake/run.py [TASK]
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def main() -> int:
    from factory.bake import bake_task
    from factory.cloud import Cloud
    from factory.local import cloud as local_cloud
    from factory.spec import find_spec, validate_paths

    task = sys.argv[1] if len(sys.argv) > 1 else "salmon-quant"
    times: list[tuple[str, float]] = []
    notes: dict[str, object] = {"task": task}

    def timed(label: str, fn):
        start = time.monotonic()
        value = fn()
        times.append((label, time.monotonic() - start))
        return value

    work = Path(tempfile.mkdtemp(prefix="factory-bench-bake-"))
    state_dir, build_root = work / "state", work / "build"
    started = time.monotonic()
    lc = None
    try:
        report = timed("validate", lambda: validate_paths([REPO / "specs"]))
        if not report.valid:
            print(report.problems, file=sys.stderr)
            return 1
        spec = find_spec(task, REPO / "specs")
        lc = timed("cloud up", lambda: local_cloud.up(state_dir, spec.region))
        where = Cloud("local", lc)
        import os

        os.environ.update(lc.env(spec.region))
        first = bake_task(spec, force=True, cloud=where, build_root=build_root)
        for key, label in (
            ("size", "size"), ("render", "render (+ base AMI from SSM)"), ("packer_validate", "packer validate"),
            ("packer_build", "packer build (ansible + container check)"), ("tag", "tag AMI"), ("register", "register"),
        ):
            if key in first.steps:
                times.append((label, first.steps[key]))
        notes["ami_id"] = first.ami_id
        notes["registered"] = first.registered
        notes["note"] = first.note
        second = timed("second bake (reused, no Packer)", lambda: bake_task(spec, cloud=where, build_root=build_root))
        notes["second_bake_status"] = second.status
    finally:
        if lc is not None:
            timed("cloud down", lambda: local_cloud.down(state_dir))
    total = time.monotonic() - started

    print(f"local bake of {task}: time of each step")
    for label, seconds in times:
        print(f"  {label:<42} {seconds:7.2f} s")
    print(f"  {'total':<42} {total:7.2f} s")
    for k, v in notes.items():
        print(f"  {k}: {v}")
    out = REPO / "bench" / "results" / "bake.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(
        {"steps": [{"step": k, "seconds": round(v, 2)} for k, v in times], "total_s": round(total, 2), **notes},
        indent=2, default=str,
    ) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
