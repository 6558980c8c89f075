"""Names and tags of what factory registers, kept within AWS's limits.

Launch templates, compute environments and queues are named `factory-<tier>`. A tier's
task list is in tags: `factory:tasks` holds as many whole names as fit in AWS's 256
characters of a tag value; when the list is longer, the rest follows in
`factory:tasks:2`, `factory:tasks:3`, ... (EC2 and Batch both allow 50 tags per
resource and 256 characters per value). A launch template version's description is
at most 255 characters (EC2 API reference, VersionDescription) and names the tasks that
fit, then how many more, pointing at the tags.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

PREFIX = "factory-"
TAG_TIER = "factory:tier"
TAG_TASKS = "factory:tasks"
TAG_MANAGED = "factory:managed"
TAG_TASK = "factory:task"
TAG_SPEC_HASH = "factory:spec-hash"
TAG_IMAGE_HASH = "factory:image-hash"

TAG_VALUE_MAX = 256
DESCRIPTION_MAX = 255


def resource_name(tier: str) -> str:
    """`factory-<tier>`: the name of the tier's launch template, compute environment and queue."""
    return PREFIX + tier


def tasks_tags(tasks: Sequence[str]) -> dict[str, str]:
    """The task list as tags: `factory:tasks`, then `factory:tasks:2`, ... each within 256 characters."""
    chunks: list[str] = []
    for task in tasks:
        if chunks and len(chunks[-1]) + 1 + len(task) <= TAG_VALUE_MAX:
            chunks[-1] += "," + task
        else:
            chunks.append(task[:TAG_VALUE_MAX])
    return {(TAG_TASKS if i == 0 else f"{TAG_TASKS}:{i + 1}"): chunk for i, chunk in enumerate(chunks)}


def tasks_from_tags(tags: Mapping[str, str]) -> list[str]:
    """The task list `tasks_tags` wrote."""
    keys = [k for k in tags if k == TAG_TASKS or (k.startswith(TAG_TASKS + ":") and k.rsplit(":", 1)[-1].isdigit())]
    keys.sort(key=lambda k: 1 if k == TAG_TASKS else int(k.rsplit(":", 1)[-1]))
    return [t for k in keys for t in tags[k].split(",") if t]


def is_tasks_tag(key: str) -> bool:
    return key == TAG_TASKS or key.startswith(TAG_TASKS + ":")


def tag_delta(have: Mapping[str, str] | None, want: Mapping[str, str]) -> tuple[dict[str, str], list[str], str]:
    """(tags to set, task-list tags to remove, a reason for the plan) to make `have` carry `want`."""
    have = have or {}
    missing = {k: v for k, v in want.items() if have.get(k) != v}
    stale = sorted(k for k in have if is_tasks_tag(k) and k not in want)
    reason = "tags: " + ", ".join([f"{k}={v}" for k, v in missing.items()] + [f"-{k}" for k in stale])
    return missing, stale, reason


def version_description(tasks: Sequence[str]) -> str:
    """`factory: a,b,c`, or `factory: a,b (+5 more; tags factory:tasks*)` within 255 characters."""
    full = "factory: " + ",".join(tasks)
    if len(full) <= DESCRIPTION_MAX:
        return full
    shown: list[str] = []
    for task in tasks:
        rest = len(tasks) - len(shown) - 1
        candidate = "factory: " + ",".join([*shown, task]) + f" (+{rest} more; tags {TAG_TASKS}*)"
        if len(candidate) > DESCRIPTION_MAX:
            break
        shown.append(task)
    return ("factory: " + ",".join(shown) + f" (+{len(tasks) - len(shown)} more; tags {TAG_TASKS}*)")[:DESCRIPTION_MAX]


def tag_dict(items: Iterable[Mapping[str, str]] | None) -> dict[str, str]:
    """EC2's [{Key, Value}] as a dict."""
    return {t["Key"]: t["Value"] for t in items or []}
