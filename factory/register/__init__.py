"""Register baked AMIs: one launch template, compute environment and job queue per tier.

The data flows through one module per AWS resource:

    targets (what each tier needs) -> ami (which AMI) -> launch_template -> compute_environment
      -> job_queue,   driven by apply (plan = apply with dry_run=True);   prune cleans up.

`names` holds names, tags and AWS's length limits; `reads` the paged reads; `waits`
waiting for an effect; `network` subnets, security groups and roles; `results` what a run
decided. docs/register.md has the details. boto3 is imported only by factory.aws.
"""

from factory.register.ami import find_ami
from factory.register.apply import register_targets, register_tasks
from factory.register.launch_template import launch_template_data, mime_user_data
from factory.register.names import (
    PREFIX,
    TAG_MANAGED,
    TAG_SPEC_HASH,
    TAG_TASK,
    TAG_TASKS,
    TAG_TIER,
    resource_name,
    tasks_from_tags,
    tasks_tags,
    version_description,
)
from factory.register.prune import PruneResult, prune
from factory.register.results import Change, Network, RegisterResult, TierResult
from factory.register.targets import TierTarget, targets_for

__all__ = [
    "PREFIX",
    "TAG_MANAGED",
    "TAG_SPEC_HASH",
    "TAG_TASK",
    "TAG_TASKS",
    "TAG_TIER",
    "Change",
    "Network",
    "PruneResult",
    "RegisterResult",
    "TierResult",
    "TierTarget",
    "find_ami",
    "launch_template_data",
    "mime_user_data",
    "prune",
    "register_targets",
    "register_tasks",
    "resource_name",
    "targets_for",
    "tasks_from_tags",
    "tasks_tags",
    "version_description",
]
