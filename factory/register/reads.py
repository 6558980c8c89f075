"""Paged reads: every Describe that can return more than one page is read to its end.

AWS pages Batch's describes at 100 items whether asked or not, and EC2's when
`MaxResults` is given (which AWS recommends: unpaged EC2 calls can be throttled or time
out on large accounts). So every list read here goes through botocore's paginator, with
an explicit page size for EC2. The local cloud pages at two items (docs/local-cloud.md),
so a read that stops at page one fails the tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from factory.aws import aws_errors

# The largest page per operation (EC2's API reference, MaxResults of each; SSM's for DescribeParameters).
EC2_PAGE_SIZE = {
    "describe_launch_templates": 200,
    "describe_launch_template_versions": 200,
    "describe_images": 1000,
    "describe_vpcs": 1000,
    "describe_subnets": 1000,
    "describe_security_groups": 1000,
    "describe_volumes": 500,
    "describe_snapshots": 1000,
    "describe_instances": 1000,
    # SSM pages DescribeParameters at 10 unless asked; 50 is its largest page (SSM API reference).
    "describe_parameters": 50,
}


def paged(client: Any, operation: str, key: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
    """Every item under `key` of every page of `operation`."""
    config = {"PageSize": EC2_PAGE_SIZE[operation]} if operation in EC2_PAGE_SIZE else {}
    for page in client.get_paginator(operation).paginate(**kwargs, PaginationConfig=config):
        yield from page.get(key) or []


def compute_environments(batch: Any, names: list[str] | None = None) -> list[dict[str, Any]]:
    with aws_errors("listing compute environments"):
        return list(paged(batch, "describe_compute_environments", "computeEnvironments", **({"computeEnvironments": names} if names else {})))


def job_queues(batch: Any, names: list[str] | None = None) -> list[dict[str, Any]]:
    with aws_errors("listing job queues"):
        return list(paged(batch, "describe_job_queues", "jobQueues", **({"jobQueues": names} if names else {})))
