"""Where each task's AMI is: the SSM parameter `/factory/<task>/ami-id`.

Registering points every task of a tier at the AMI the tier now runs, with SSM's data type
`aws:ec2:image`, so the parameter's history is the task's AMI history (`factory rollback`
reads it). It is part of register's desired state: the plan shows it, a parameter already
right is left alone (no PutParameter), and it moves last, after the launch template, the
compute environment and the queue, so it never names an AMI the task does not run yet; a
run that died before it is finished by the next one.

AWS validates an `aws:ec2:image` value asynchronously: PutParameter answers 200 before
the check, and a value that fails it is never stored (SSM API reference, PutParameter
`DataType`; user guide, "Native parameter support for Amazon Machine Image IDs"). So after
a put factory waits until the parameter reads back with the new value.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from factory.aws import aws_errors
from factory.register.results import Change
from factory.register.run import Run
from factory.register.targets import TierTarget

DATA_TYPE = "aws:ec2:image"
NAMES_PER_GET = 10  # GetParameters takes at most 10 names (SSM API reference)
# A rollback writes the parameter with a description that starts so: register then keeps the
# task on that AMI (a hold) until an AMI is given (--ami) or a bake makes a new image. The
# value and its mark are one PutParameter, so no run can leave one without the other.
HOLD_MARK = "factory rollback:"


def parameter_name(task: str) -> str:
    """`/factory/<task>/ami-id`: where the AMI a task runs is published."""
    return f"/factory/{task}/ami-id"


def current_values(ssm: Any, tasks: Iterable[str]) -> dict[str, str | None]:
    """task -> the AMI its parameter names now (None when it has none yet)."""
    tasks = list(tasks)
    names = {parameter_name(t): t for t in tasks}
    found: dict[str, str | None] = dict.fromkeys(tasks)
    ordered = list(names)
    for i in range(0, len(ordered), NAMES_PER_GET):
        with aws_errors("reading the tasks' AMI parameters"):
            # GetParameters has no paging: each call names at most ten parameters and answers for all of them.
            answer = ssm.get_parameters(Names=ordered[i : i + NAMES_PER_GET])
        for p in answer.get("Parameters") or []:
            if p["Name"] in names:
                found[names[p["Name"]]] = p.get("Value")
    return found


def history(ssm: Any, task: str) -> list[dict[str, Any]]:
    """Every stored version of the task's parameter, oldest first ([] when it has none)."""
    from botocore.exceptions import ClientError

    from factory.aws import error_code
    from factory.register.reads import paged

    with aws_errors(f"reading the AMI history of task {task}"):
        try:
            versions = list(paged(ssm, "get_parameter_history", "Parameters", Name=parameter_name(task)))
        except ClientError as exc:
            if error_code(exc) == "ParameterNotFound":
                return []
            raise
    return sorted(versions, key=lambda v: int(v.get("Version", 0)))


def held(reads: Any, task: str) -> str | None:
    """The AMI `factory rollback` holds the task at: the parameter's value when its
    description carries the rollback's mark (None when no rollback holds it)."""
    name = parameter_name(task)
    if not reads.descriptions().get(name, "").startswith(HOLD_MARK):
        return None
    return reads.parameters([name])[name]


def hold_description(task: str, ami: str, previous: str | None) -> str:
    """The description a rollback writes: it marks the hold, and says how to end it."""
    return (f"{HOLD_MARK} {task} held at {ami} (rolled back from {previous or 'nothing'}) until it rolls forward: "
            f"`factory register {task} --ami AMI`, or a bake that makes a new image")


def reconcile(
    run: Run, ssm: Any, target: TierTarget, ami_id: str, changes: list[Change], reads: Any = None, description: str | None = None
) -> None:
    """Point every task of the tier at `ami_id`; a parameter already right is not touched.
    `reads` (a RegionReads) answers from the region's batched read of the parameters.
    `description` replaces the usual one (a rollback's hold: HOLD_MARK)."""
    if reads is not None:
        values = reads.parameters(parameter_name(t) for t in target.tasks)
        have = {t: values[parameter_name(t)] for t in target.tasks}
    else:
        have = current_values(ssm, target.tasks)
    for task in target.tasks:
        name = parameter_name(task)
        old = have[task]
        if old == ami_id:
            changes.append(Change("ssm-parameter", name, "unchanged", ami_id))
            continue
        changes.append(Change("ssm-parameter", name, "update" if old else "create", f"{old} -> {ami_id}" if old else ami_id))
        if run.dry_run:
            continue
        run.progress(f"pointing {name} at {ami_id}")
        with aws_errors(f"writing SSM parameter {name}"):
            ssm.put_parameter(
                Name=name,
                Value=ami_id,
                Type="String",
                DataType=DATA_TYPE,
                Overwrite=True,
                Description=description or f"the AMI factory registered for task {task} (tier {target.tier})",
            )
        wait_until_stored(run, ssm, task, ami_id)


def wait_until_stored(run: Run, ssm: Any, task: str, ami_id: str) -> None:
    """Until the parameter reads back `ami_id` (SSM checks an AMI value after answering)."""
    name = parameter_name(task)

    def check() -> tuple[bool, str]:
        value = current_values(ssm, [task])[task]
        return value == ami_id, f"{value or 'missing'} (SSM has not accepted {ami_id} yet)"

    run.waiter.until(
        f"SSM parameter {name}",
        check,
        hint=f"SSM validates an {DATA_TYPE} value after PutParameter and drops one that fails: check that {ami_id} exists and is available, "
        "then run `factory register` again",
    )
