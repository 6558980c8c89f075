"""`make demo`: the main job on the local cloud, step by step, with the time of each.

1. start the local cloud (moto's server + a throwaway build host),
2. `factory bake salmon-quant --cloud local` (validate, size, render, Packer + Ansible,
   register the launch template, compute environment and queue),
3. print the result and the Nextflow config,
4. grow the task's disk (a copy of the specs with more headroom) and register again: the
   compute environment is updated in place (a new launch template version), as on AWS
   with Batch's service-linked role,
5. ask whether the image is current (`factory status`), play AWS releasing a new
   ECS-optimized AMI (`factory local publish-base`) and ask again: now it is stale,
6. stop the local cloud, whatever happened.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FACTORY = str(Path(sys.executable).with_name("factory"))
TASK = "salmon-quant"


def step(label: str, args: list[str], capture: bool = False) -> subprocess.CompletedProcess:
    print(f"\n==> {label}: factory {' '.join(args)}", flush=True)
    start = time.monotonic()
    proc = subprocess.run([FACTORY, *args], cwd=REPO, text=True, stdout=subprocess.PIPE if capture else None)
    took = time.monotonic() - start
    TIMES.append((label, took, proc.returncode))
    if proc.returncode != 0:
        raise SystemExit(f"demo: `factory {' '.join(args)}` failed (exit {proc.returncode})")
    return proc


TIMES: list[tuple[str, float, int]] = []


def grow_volume(folder: Path) -> Path:
    """A copy of specs/ where the task has more headroom: a larger volume, the same image."""
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(REPO / "specs", folder)
    spec = folder / f"{TASK}.yaml"
    text = spec.read_text()
    if "headroom:" not in text:
        raise SystemExit(f"demo: {spec} has no `headroom:` line to change")
    spec.write_text("\n".join("  headroom: 0.8" if line.strip().startswith("headroom:") else line for line in text.splitlines()) + "\n")
    return folder


def main() -> int:
    started = time.monotonic()
    try:
        step("validate the specs", ["validate"])
        step("start the local cloud", ["local", "up"])
        step("size the task", ["size", TASK])
        baked = step(f"bake and register {TASK}", ["bake", TASK, "--cloud", "local", "--json"], capture=True)
        result = json.loads(baked.stdout)
        step("write the Nextflow config", ["nextflow-config", TASK, "--cloud", "local", "--out", "build/nextflow-awsbatch.config"])
        print("\n==> result")
        lt = result.get("launch_template") or {}
        for key, value in (
            ("task", result.get("task")),
            ("AMI", result.get("ami_id")),
            ("baked (false = reused)", result.get("baked")),
            ("volume (GiB)", result.get("volume_gib")),
            ("launch template", f"{lt.get('name')} version {lt.get('version')}" if lt else None),
            ("compute environment", result.get("compute_environment")),
            ("job queue", result.get("job_queue")),
        ):
            print(f"  {key:<24} {value}")
        print("\n==> build/nextflow-awsbatch.config")
        print((REPO / "build" / "nextflow-awsbatch.config").read_text())
        grown = grow_volume(REPO / "build" / "demo-specs")
        step("plan a larger disk", ["plan", TASK, "--cloud", "local", "--specs-dir", str(grown)])
        step("register it: an in-place update", ["register", TASK, "--cloud", "local", "--specs-dir", str(grown)])
        step("is the image current?", ["status", TASK, "--cloud", "local", "--specs-dir", str(grown)])
        step("AWS releases a new ECS-optimized AMI", ["local", "publish-base", "al2023"])
        step("and now? (`make images` would rebake)", ["status", TASK, "--cloud", "local", "--specs-dir", str(grown)])
    finally:
        try:
            step("stop the local cloud", ["local", "down"])
        except SystemExit as exc:
            print(exc, file=sys.stderr)
        print("\n==> time of each step")
        for label, took, rc in TIMES:
            print(f"  {label:<32} {took:6.1f} s{'' if rc == 0 else f'  (exit {rc})'}")
        print(f"  {'total':<32} {time.monotonic() - started:6.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
