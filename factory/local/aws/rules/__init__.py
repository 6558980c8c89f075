"""AWS's rules where moto is kinder, taught to moto's backends inside the local cloud's server.

Each module teaches one service (docs/local-cloud.md has the table: AWS's behaviour,
moto's, ours, and the AWS document it follows). They are installed once, by
`factory.local.aws.aws_server` at start, in the server's own process: every client of the
local cloud (the CLI, Packer, the tests) meets the same rules.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Settings:
    state_delay: float = 1.0  # seconds a Batch resource spends CREATING/UPDATING/DELETING
    # Seconds an infrastructure update (new launch template, instance types, ...: anything but
    # vCPUs) keeps an environment UPDATING while AWS replaces its instances; the old ones may
    # run jobs for the update policy's whole timeout. None: state_delay.
    rolling_delay: float | None = None
    stale_read: float = 0.3  # seconds after an update during which a describe still shows the old state
    # Seconds a deregistered AMI's snapshots stay "in use". AWS refuses DeleteSnapshot right
    # after DeregisterImage only now and then (Packer 1.6.6 deletes its temporary snapshots that
    # way without a retry, and works on AWS), so it is off unless asked for.
    snapshot_release_delay: float = 0.0
    job_step: float = 0.3  # seconds a Batch job spends at least in SUBMITTED, RUNNABLE and STARTING each
    # Seconds a new EBS volume is `creating` before it is `available`; in the first half of
    # them DescribeVolumes by its id answers InvalidVolume.NotFound (eventual consistency).
    # Off unless asked for: most callers of the local cloud attach a volume they just made.
    volume_delay: float = 0.0
    # Seconds an AMI copy (CopyImage) is `pending` before it is `available` (rules/ami_copy.py).
    copy_delay: float = 0.3


def install(settings: Settings) -> None:
    from factory.local.aws.rules import ami_copy, batch, batch_quotas, ebs, ec2, ssm

    batch.install(settings)
    batch_quotas.install(settings)  # around batch's methods
    ec2.install(settings)
    ebs.install(settings)  # after ec2: it wraps ec2's CreateVolume (client tokens)
    ssm.install(settings)
    ami_copy.install(settings)
