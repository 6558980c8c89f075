"""The Nextflow config that sends each task's process to its tier's job queue.

    process.executor = 'awsbatch'
    aws.region = 'us-east-1'
    aws.batch.cliPath = '/home/ec2-user/miniconda/bin/aws'
    process {
        withName: 'SALMON_QUANT' { queue = 'factory-salmon-quant' }
    }

A GPU task (`image.accelerator: nvidia`) runs on its own GPU queue and asks for
`accelerator = N` GPUs (`nextflow.gpus`, default 1), which Nextflow turns into Batch's GPU
resource requirement. Nextflow ignores `accelerator.type` on AWS Batch (with a warning:
nf-amazon's AwsBatchTaskHandler; Nextflow docs, process directive `accelerator`): which GPU
a task gets is decided by the queue's instance types (the spec's batch.instance_types).

Queue names follow factory.register (`factory-<tier>`), so the config can be written
before or after `factory register`; `queues_exist` checks that they are registered.
Nextflow has one `aws.region` and one `aws.batch.cliPath` per run, so the tasks in one
config must agree on both (tier groups already include region and awscli prefix).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

from factory.errors import FactoryError, UsageError
from factory.register import resource_name

# Nextflow stages files with the CLI at cliPath inside each task's container, so it runs
# with the image's C library, not the host's (the bake checks nextflow.containers).
CLI_REQUIREMENT = (
    "// cliPath runs inside each task's container, with that image's C library: the image needs",
    "// glibc 2.17 or newer (Miniconda's floor); musl-based images (Alpine) cannot run it.",
    "// `factory bake` runs it in every image a spec lists in nextflow.containers.",
)


GPU_NOTE = (
    "// A GPU task's process asks for `accelerator = N` GPUs (Batch's GPU resource requirement) on its",
    "// GPU queue. accelerator.type is ignored on AWS Batch: the queue's instance types choose the GPU.",
)


def _quote(value: str) -> str:
    """A Groovy single-quoted string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def queue_for_tasks(specs: Sequence[Any], tiers: Sequence[Any]) -> dict[str, str]:
    """task name -> job queue name."""
    out: dict[str, str] = {}
    for tier in tiers:
        for task in tier.tasks:
            out[task] = resource_name(tier.name)
    missing = sorted(s.name for s in specs if s.name not in out)
    if missing:
        raise FactoryError(f"task(s) {', '.join(missing)} are in no tier; run `factory size --all` to see the tiers")
    return out


def render_config(specs: Sequence[Any], tiers: Sequence[Any]) -> str:
    """The config text for `specs` (each with a tier in `tiers`)."""
    if not specs:
        raise FactoryError("no tasks for the Nextflow config: name tasks or use --all")
    for label, get in (("region", lambda s: s.region), ("awscli.prefix", lambda s: s.awscli.prefix)):
        values = {get(s) for s in specs}
        if len(values) > 1:
            detail = "; ".join(f"{s.name}: {get(s)}" for s in specs)
            raise FactoryError(
                f"the tasks differ in {label} ({detail}); one Nextflow config has one aws.region and one "
                "aws.batch.cliPath: write one config per group, naming its tasks (factory nextflow-config TASK...)"
            )
    processes: dict[str, str] = {}
    for s in specs:
        other = processes.get(s.nextflow.process)
        if other and other != s.name:
            raise FactoryError(f"tasks {other} and {s.name} both set nextflow.process {s.nextflow.process!r}; give each its own in its spec")
        processes[s.nextflow.process] = s.name
    queues = queue_for_tasks(specs, tiers)
    first = specs[0]
    width = max(len(_quote(p)) for p in processes)
    lines = [
        "// Written by `factory nextflow-config`: each task's process runs on its storage tier's",
        "// AWS Batch job queue, on the AMI and volume factory registered for it.",
        "process.executor = 'awsbatch'",
        f"aws.region = {_quote(first.region)}",
        *CLI_REQUIREMENT,
        f"aws.batch.cliPath = {_quote(first.awscli.cli_path)}",
        "",
        "process {",
    ]
    by_name = {s.name: s for s in specs}
    if any(s.nextflow.gpus for s in specs):
        lines[-1:-1] = list(GPU_NOTE)
    for process in sorted(processes):
        task = processes[process]
        gpus = by_name[task].nextflow.gpus
        settings = f"queue = {_quote(queues[task])}" + (f"; accelerator = {int(gpus)}" if gpus else "")
        comment = f"{task}, {gpus} NVIDIA GPU{'s' if gpus != 1 else ''} on {', '.join(by_name[task].batch.instance_types)}" if gpus else task
        lines.append(f"    withName: {_quote(process).ljust(width)} {{ {settings} }}  // {comment}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` so a reader sees the old file or the new one, never half of one."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"--out {path}: is a folder; give a file name such as {path / 'factory.config'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise UsageError(f"--out {path}: cannot write there: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError):
            raise UsageError(f"--out {path}: cannot write there: {exc.strerror or exc}") from None
        raise


def queues_exist(clients: Any, queue_names: Sequence[str]) -> list[str]:
    """The queue names in `queue_names` that AWS Batch does not know (read-only)."""
    from factory.register.reads import job_queues

    found = job_queues(clients.batch(), list(queue_names))
    have = {q["jobQueueName"] for q in found if q.get("status") not in ("DELETING", "DELETED")}
    return sorted(set(queue_names) - have)
