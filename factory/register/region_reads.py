"""What factory reads of one region, read once per run for every spec and tier.

`factory status` and a `factory bake --all` where nothing changed must not make a round of
AWS calls per spec (issue 12): each read here is one paged read of the whole region (or
GetParameters ten names at a time), done the first time it is needed and then answered
from memory:

- factory's AMIs: every image of this account tagged `factory:task` or `factory:image-hash`;
- launch templates, and the default and latest version of every one of them
  (DescribeLaunchTemplateVersions without a template id takes `$Default` and `$Latest`
  for every template of the account: EC2 API reference, DescribeLaunchTemplateVersions
  `LaunchTemplateId` and `Versions`);
- compute environments and job queues;
- the tasks' `/factory/<task>/ami-id` parameters (and their descriptions, where a rollback
  marks a hold), the ECS-optimized base parameters, and the builder's instance types.

The memory is of the moment it was read: a run changes each tier's own resources once
(launch template, environment, queue, parameter), after reading them, so no tier reads what
another has changed. What is not in memory (an AMI id given with `--ami`, a version the
environment pins that is neither the default nor the latest) is read by id.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from factory.aws import aws_errors
from factory.register.names import TAG_IMAGE_HASH, TAG_TASK, tag_dict, tasks_from_tags
from factory.register.reads import compute_environments, job_queues, paged

NAMES_PER_GET = 10  # GetParameters takes at most 10 names (SSM API reference)


class RegionReads:
    """One region's reads, each made once (see the module's doc)."""

    def __init__(self, clients: Any):
        self.clients = clients
        self._images: dict[str, dict[str, Any]] | None = None
        self._templates: dict[str, dict[str, Any]] | None = None
        self._versions: dict[tuple[str, int], dict[str, Any] | None] | None = None
        self._ces: list[dict[str, Any]] | None = None
        self._queues: dict[str, dict[str, Any]] | None = None
        self._parameters: dict[str, str | None] = {}
        self._instance_types: dict[str, dict[str, Any] | None] = {}
        self._descriptions: dict[str, str] | None = None

    # -- AMIs ---------------------------------------------------------------------------

    def images(self) -> dict[str, dict[str, Any]]:
        """Every AMI of this account that factory tagged, by id (any state)."""
        if self._images is None:
            with aws_errors("listing factory's AMIs"):
                found = paged(
                    self.clients.ec2(), "describe_images", "Images", Owners=["self"],
                    Filters=[{"Name": "tag-key", "Values": [TAG_TASK, TAG_IMAGE_HASH]}],
                )
                self._images = {i["ImageId"]: i for i in found}
        return self._images

    def image(self, ami: str) -> dict[str, Any] | None:
        """One AMI: from factory's, else read by id (None when it does not exist)."""
        known = self.images().get(ami)
        if known is not None:
            return known
        from botocore.exceptions import ClientError

        from factory.aws import error_code

        with aws_errors(f"reading AMI {ami}"):
            try:
                images = self.clients.ec2().describe_images(ImageIds=[ami])["Images"]  # one id, so one answer: no paging (MaxResults) needed
            except ClientError as exc:
                if not error_code(exc).startswith("InvalidAMIID"):
                    raise
                images = []
        return images[0] if images else None

    def newest_image(self, *, task: str | None = None, image_hash: str | None = None, architecture: str | None = None) -> dict[str, Any] | None:
        """The newest available factory AMI of `task` (baked for it or reused by a bake of it:
        register.ami.serves) and/or tagged factory:image-hash=`image_hash`."""
        out = []
        for image in self.images().values():
            tags = tag_dict(image.get("Tags"))
            if image.get("State") != "available":
                continue
            if task is not None and tags.get(TAG_TASK) != task and task not in tasks_from_tags(tags):
                continue  # neither baked for the task nor reused by a bake of it (register.ami.serves)
            if image_hash is not None and tags.get(TAG_IMAGE_HASH) != image_hash:
                continue
            if architecture and image.get("Architecture") and image["Architecture"] != architecture:
                continue
            out.append(image)
        return max(out, key=lambda i: (i.get("CreationDate", ""), i["ImageId"])) if out else None

    # -- launch templates ---------------------------------------------------------------

    def launch_templates(self) -> dict[str, dict[str, Any]]:
        """Every launch template of the region, by name (factory's and others: a name
        factory wants may be taken)."""
        if self._templates is None:
            with aws_errors("listing launch templates"):
                self._templates = {t["LaunchTemplateName"]: t for t in paged(self.clients.ec2(), "describe_launch_templates", "LaunchTemplates")}
        return self._templates

    def version(self, template_id: str, number: int) -> dict[str, Any] | None:
        """One version of a launch template (its LaunchTemplateVersion: data, number, ...);
        the default and latest of every template come from one read, another by number."""
        self._default_and_latest()
        assert self._versions is not None
        key = (template_id, int(number))
        if key not in self._versions:
            from botocore.exceptions import ClientError

            from factory.aws import error_code

            with aws_errors(f"reading launch template {template_id} version {number}"):
                try:
                    found = self.clients.ec2().describe_launch_template_versions(  # one version by number: no paging (MaxResults) needed
                        LaunchTemplateId=template_id, Versions=[str(number)]
                    )["LaunchTemplateVersions"]
                except ClientError as exc:
                    if "NotFound" not in error_code(exc):
                        raise
                    found = []
            self._versions[key] = found[0] if found else None
        return self._versions[key]

    def _default_and_latest(self) -> None:
        if self._versions is None:
            versions: dict[tuple[str, int], dict[str, Any] | None] = {}
            if self.launch_templates():
                with aws_errors("reading the launch templates' default and latest versions"):
                    for v in paged(self.clients.ec2(), "describe_launch_template_versions", "LaunchTemplateVersions", Versions=["$Default", "$Latest"]):
                        versions[(v["LaunchTemplateId"], int(v["VersionNumber"]))] = v
            self._versions = versions

    def prime(self) -> None:
        """Make the whole-region reads now, before tiers are handled side by side
        (apply.register_targets): threads then only answer from memory, never read twice."""
        self.images()
        self.launch_templates()
        self._default_and_latest()
        self.compute_environments()
        self.queues()

    # -- Batch ----------------------------------------------------------------------------

    def compute_environments(self) -> list[dict[str, Any]]:
        if self._ces is None:
            self._ces = compute_environments(self.clients.batch())
        return self._ces

    def queues(self) -> dict[str, dict[str, Any]]:
        """Job queues by name, without those being deleted."""
        if self._queues is None:
            self._queues = {q["jobQueueName"]: q for q in job_queues(self.clients.batch()) if q.get("status") not in ("DELETING", "DELETED")}
        return self._queues

    # -- SSM and instance types -----------------------------------------------------------

    def parameters(self, names: Iterable[str]) -> dict[str, str | None]:
        """SSM parameter name -> its value (None when it does not exist), ten names to a call;
        each name read once per run."""
        wanted = list(dict.fromkeys(names))
        missing = [n for n in wanted if n not in self._parameters]
        chunks = [missing[i : i + NAMES_PER_GET] for i in range(0, len(missing), NAMES_PER_GET)]
        ssm = self.clients.ssm()  # made here, once: a boto3 client's calls are thread-safe, its making is not

        def get(chunk: list[str]) -> dict[str, Any]:
            with aws_errors("reading SSM parameters"):
                # GetParameters has no paging: each call names at most ten parameters and answers for all of them.
                return ssm.get_parameters(Names=chunk)

        if len(chunks) > 1:  # a hundred tasks are ten calls: made side by side, four at a time
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=4, thread_name_prefix="ssm-read") as pool:
                answers = list(pool.map(get, chunks))
        else:
            answers = [get(c) for c in chunks]
        for chunk, answer in zip(chunks, answers, strict=True):
            self._parameters.update(dict.fromkeys(chunk))
            for p in answer.get("Parameters") or []:
                self._parameters[p["Name"]] = p.get("Value")
        return {n: self._parameters[n] for n in wanted}

    def descriptions(self, prefix: str = "/factory/") -> dict[str, str]:
        """Name -> description of every SSM parameter under `prefix` (one paged read): where
        `factory rollback` marks a hold (register.parameter.held)."""
        if self._descriptions is None:
            with aws_errors("reading the descriptions of factory's SSM parameters"):
                found = paged(self.clients.ssm(), "describe_parameters", "Parameters",
                              ParameterFilters=[{"Key": "Name", "Option": "BeginsWith", "Values": [prefix]}])
                self._descriptions = {p["Name"]: p.get("Description") or "" for p in found}
        return self._descriptions

    def instance_type(self, name: str) -> dict[str, Any] | None:
        """One instance type's description (None when the region offers no such type)."""
        if name not in self._instance_types:
            from botocore.exceptions import ClientError

            from factory.aws import error_code

            with aws_errors(f"looking up the builder instance type {name}"):
                try:
                    types = self.clients.ec2().describe_instance_types(InstanceTypes=[name]).get("InstanceTypes", [])  # one type, so one answer: no paging (MaxResults) needed
                except ClientError as exc:
                    if error_code(exc) != "InvalidInstanceType":
                        raise
                    types = []
            self._instance_types[name] = types[0] if types else None
        return self._instance_types[name]
