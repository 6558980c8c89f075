"""`factory local up|down|status|fault`: the local cloud (moto's server with our AWS rules, a throwaway build host, a mirror)."""

from __future__ import annotations

from pathlib import Path

import typer

from factory.cli.app import app
from factory.cli.common import DEFAULT_SPECS_DIR, err, handle_errors, print_json

local_app = typer.Typer(
    help="Run the local cloud: moto's server, a throwaway build host and an installer mirror, on loopback.",
    no_args_is_help=True,
)
app.add_typer(local_app, name="local")

_STATE = typer.Option(None, "--state-dir", help="Where the local cloud keeps its state (default .factory/, or $FACTORY_STATE_DIR).")


@local_app.command()
@handle_errors
def up(
    region: str = typer.Option("us-east-1", "--region", help="The region the build host's key pair is imported into first."),
    state_delay: float = typer.Option(1.0, "--state-delay", min=0.0, help="Seconds a Batch resource spends CREATING/UPDATING/DELETING."),
    page_size: int = typer.Option(2, "--page-size", min=1, help="Items per page of every paged Describe (AWS pages at up to 100-1000)."),
    state_dir: Path | None = _STATE,
    json_out: bool = typer.Option(False, "--json", help="Print where everything runs as JSON."),
) -> None:
    """Start moto's server (with AWS's rules, paging and faults), the build host and the mirror."""
    from factory.local import cloud

    lc = cloud.up(state_dir, region, state_delay=state_delay, page_size=page_size)
    if json_out:
        print_json(lc.to_json())
        return
    _describe(lc)
    print("stop it with `factory local down`")


@local_app.command()
@handle_errors
def down(state_dir: Path | None = _STATE) -> None:
    """Stop the local cloud and remove what it made (no process, no mount left)."""
    from factory.local import cloud

    if cloud.down(state_dir):
        print("local cloud stopped")
    else:
        err("no local cloud was running")


@local_app.command()
@handle_errors
def status(
    state_dir: Path | None = _STATE,
    json_out: bool = typer.Option(False, "--json", help="Print the status as JSON."),
) -> None:
    """Say whether the local cloud runs, and where. Exit 1 when it is not running."""
    from factory.local import cloud

    lc = cloud.load(state_dir)
    if lc is None:
        if json_out:
            print_json({"running": False})
        else:
            print("local cloud: not running (start it with `factory local up`)")
        raise typer.Exit(1)
    data = lc.to_json()
    if json_out:
        print_json(data)
    else:
        _describe(lc, data)
    if not data["running"]:
        raise typer.Exit(1)


@local_app.command()
@handle_errors
def fault(
    operation: str = typer.Argument(None, help="SERVICE:Operation, as IAM spells it, e.g. ec2:CreateLaunchTemplate or batch:UpdateComputeEnvironment."),
    kind: str = typer.Option("error", "--kind", help="error (an AWS error, not retried) | throttle (the service's throttling error) | drop (connection closed) | broken (ec2:CreateVolume: made, then in error)."),
    times: int = typer.Option(1, "--times", min=1, help="How many of the next calls fail."),
    code: str = typer.Option("", "--code", help="The AWS error code for --kind error (default InjectedFault)."),
    caller: str = typer.Option("", "--caller", help="Fail only this caller's calls, as the call log names it: packer, command:bake, ... (default: anyone's)."),
    clear: bool = typer.Option(False, "--clear", help="Disarm every fault."),
    state_dir: Path | None = _STATE,
) -> None:
    """Make the next N calls of an operation fail on the running local cloud, as AWS fails."""
    from factory.errors import UsageError
    from factory.local import cloud
    from factory.local.aws import faults

    endpoint = cloud.running(state_dir).endpoint
    if clear:
        faults.clear(endpoint)
        print("faults cleared")
        return
    if not operation:
        raise UsageError("name the operation to fail, e.g. `factory local fault ec2:CreateLaunchTemplate`, or pass --clear")
    faults.arm(endpoint, faults.Fault(operation, kind, times, code, caller))
    for armed in faults.armed(endpoint):
        by = f" of {armed['caller']}" if armed.get("caller") else ""
        print(f"armed: {armed['operation']} fails ({armed['kind']}) for the next {armed['times']} call(s){by}")


@local_app.command("publish-base")
@handle_errors
def publish_base(
    family: str = typer.Argument(..., help="The ECS-optimized family: al2023, al2 or al1 (ecs-al2023 ... as in a spec's image.base)."),
    arch: str = typer.Option("x86_64", "--arch", help="x86_64 | arm64"),
    accelerator: str = typer.Option("none", "--accelerator", help="none | nvidia (the family's ECS GPU-optimized AMI)"),
    region: str = typer.Option("us-east-1", "--region", help="The region AWS releases it in."),
    state_dir: Path | None = _STATE,
    json_out: bool = typer.Option(False, "--json", help="Print what was published as JSON."),
    rollback: bool = typer.Option(False, "--rollback", help="Instead, move the recommended parameters back to the image before (as AWS once did: awslabs/amazon-eks-ami#924)."),
) -> None:
    """Play AWS releasing a new ECS-optimized AMI: register one and move the recommended SSM parameters to it."""
    from factory.local import cloud
    from factory.local.aws import publish

    done = publish.publish_base(cloud.running(state_dir).endpoint, family, arch, region, rollback=rollback, accelerator=accelerator)
    if json_out:
        print_json(done)
        return
    print(f"{'rolled back to' if rollback else 'published'} {done['ami_id']} ({done['name']}) in {done['region']}")
    print(f"  {done['parameter']}: {done['previous']} -> {done['ami_id']}")
    print("  `factory status --cloud local` now compares the lock with it; `factory lock --update --cloud local` moves the lock")


def _describe(lc, data=None) -> None:
    data = data or lc.to_json()
    state = "running" if data["running"] else "NOT healthy: " + ", ".join(k for k, v in data["alive"].items() if not v) + " down"
    host = data["build_host"]
    print(f"local cloud: {state}")
    print(f"  AWS endpoint    {data['endpoint']}  (moto + factory's rules, pid {data['moto_pid']}; docs/local-cloud.md)")
    print(f"  build host      {host['ssh']}  key pair {host['key_pair']}")
    print(f"  installer       {data['mirror']['installer_url']}")
    print(f"  state           {data['state_file']}")
    print("  use it          factory bake TASK --cloud local")


@local_app.command("run")
@handle_errors
def run(
    task: str = typer.Argument(..., help="The task (its spec's file stem), baked and registered on the local cloud."),
    command: list[str] = typer.Argument(None, help="After `--`: the command to run in the container, e.g. -- sh -c 'salmon quant ...'."),
    image: str = typer.Option(..., "--image", help="The container image, from your Docker engine (loaded into the instance's)."),
    inputs: list[Path] = typer.Option([], "--input", help="A file or folder staged into the task's working directory (repeatable)."),
    index: list[Path] = typer.Option([], "--index", help="An index file or folder staged beside the inputs (repeatable)."),
    no_grow: bool = typer.Option(False, "--no-grow", help="Run without the grow agent: the sizing alone."),
    pool: str = typer.Option("lvm-xfs", "--pool", help="The grow pool the instance runs: lvm-xfs (what AWS instances run) or btrfs."),
    instance_type: str = typer.Option(None, "--instance-type", help="The instance type to launch (default the spec's first); a type with NVMe instance storage comes with its disks."),
    attach_delay: float = typer.Option(None, "--attach-delay", min=0.0, help="Seconds an EBS attachment takes to give the instance a device (default 2)."),
    specs_dir: Path = typer.Option(DEFAULT_SPECS_DIR, "--specs-dir", help="Folder holding the task specs."),
    state_dir: Path | None = _STATE,
    json_out: bool = typer.Option(False, "--json", help="Print only the result as JSON on stdout (the command's output goes to stderr)."),
) -> None:
    """Rehearse TASK on a local instance of its launch template: IMAGE runs COMMAND on the disk the task would get on AWS Batch.

    Exits with the command's status. A task that is not baked on the local cloud is refused
    with the command that bakes it."""
    import sys

    from factory.errors import UsageError
    from factory.local import cloud
    from factory.local.instance import rehearsal
    from factory.local.instance.instance_pool import POOLS
    from factory.spec import find_spec

    if pool not in POOLS:
        raise UsageError(f"--pool {pool}: expected one of {', '.join(POOLS)}")
    spec = find_spec(task, specs_dir)
    local = cloud.running(state_dir)
    out = sys.stderr if json_out else sys.stdout
    report = rehearsal.rehearse(local, spec, image, command or [], inputs=inputs, index=index, grow=not no_grow,
                                attach_delay=attach_delay, pool=pool, instance_type=instance_type, out=out, say=lambda text: print(f"factory: {text}", file=sys.stderr))
    if json_out:
        print_json(report.to_json())
    else:
        for line in report.lines():
            print(line)
    raise typer.Exit(report.exit_code)


@local_app.command("submit")
@handle_errors
def submit_job(
    queue: str = typer.Argument(..., help="The job queue, e.g. factory-salmon-quant (`factory register --cloud local` made it)."),
    command: list[str] = typer.Argument(None, help="After `--`: the job's command, e.g. -- sleep 600."),
    image: str = typer.Option(..., "--image", help="The container image, on the Docker engine the local cloud runs jobs on (no registry pull)."),
    name: str = typer.Option("factory-local", "--name", help="The job's name."),
    wait: bool = typer.Option(False, "--wait", help="Follow the job until it ends, print its output, exit 0 only if it SUCCEEDED."),
    timeout: float = typer.Option(3600.0, "--timeout", min=1.0, help="With --wait: give up after this many seconds."),
    region: str = typer.Option("us-east-1", "--region", help="The queue's region."),
    state_dir: Path | None = _STATE,
    json_out: bool = typer.Option(False, "--json", help="Print the job (DescribeJobs) as JSON."),
) -> None:
    """Submit one Batch job to a queue of the local cloud, as your pipeline would: it runs in a container on the local
    Docker engine, through AWS's job states. Rehearse what a prune, replace or roll does to a running pipeline."""
    import sys

    from factory.local import cloud
    from factory.local.aws import submit

    local = cloud.running(state_dir)
    clients = local.setup_clients(region)  # the pipeline's calls, not factory's: marked factory-local in the call log
    job_id = submit.submit(clients, queue, image, command or [], name=name)
    if not wait:
        if json_out:
            print_json(submit.describe(clients, job_id))
            return
        print(f"submitted job {job_id} ({name}) to {queue}")
        print(f"  follow it with  aws batch describe-jobs --jobs {job_id} --endpoint-url {local.endpoint}")
        return
    say = (lambda text: print(text, file=sys.stderr)) if json_out else print
    job = submit.wait(clients, job_id, timeout=timeout, on_status=lambda j: say(f"job {job_id}: {j['status']}"))
    for line in submit.log_lines(clients, job):
        say(f"  | {line}")
    if job.get("statusReason"):
        say(f"  {job['statusReason']}")
    if json_out:
        print_json(job)
    raise typer.Exit(0 if job["status"] == "SUCCEEDED" else 1)
