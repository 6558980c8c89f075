"""SSM Parameter Store as AWS runs it, where factory depends on it and moto differs.

| AWS | moto 5 | ours |
| --- | --- | --- |
| PutParameter with `DataType: aws:ec2:image` answers 200 before the value is checked; a value that is not an available AMI of the account's region is then dropped (the parameter is not created or updated) | stores any value at once | the new version is stored `stale_read` seconds after the call, and only if it names an available AMI in that region; the call answers 200 with its version number either way |
| DescribeParameters answers `MaxResults` (1 to 50, default 10) parameters a page | 10 a page whatever is asked | `MaxResults` a page; more than 50 is a ValidationException |
| an ECS-optimized `.../recommended` parameter's value is a JSON document (`{"ecs_agent_version": ..., "image_id": ..., "image_name": ...}`) | the value is Python's repr of a dict (`{'ecs_agent_version': ...}`), not JSON | the JSON text |
| a public parameter's LastModifiedDate is when AWS last moved it | the moment moto first loads it (another date every start) | the date of the release its image name carries (`...2023.0.20260922...` -> 2026-09-22T00:00:00Z), the same every start, so `factory lock` writes the same bytes |

AWS sources: the ECS Developer Guide, "Retrieving Amazon ECS-optimized Linux AMI metadata"
(`aws ssm get-parameters --names /aws/service/ecs/optimized-ami/amazon-linux-2023/recommended`
answers a Value that is a JSON string with image_id, image_name, ecs_agent_version,
ecs_runtime_version, source_image_name, os, ...; aws/amazon-ecs-ami's
generate-release-notes.sh reads those fields with jq); SSM API reference, PutParameter `DataType` ("a successful HTTP 200 response
does not guarantee that your parameter was successfully created or updated. The
aws:ec2:image value is validated asynchronously"); SSM user guide, "Parameter data types"
and "Native parameter support for Amazon Machine Image IDs"; SSM API reference,
DescribeParameters `MaxResults` ("Valid Range: Minimum value of 1. Maximum value of 50").

A version dropped by the check leaves a gap in the version numbers; AWS does not say
whether it does the same. factory waits until the value reads back, so it depends on
neither.
"""

from __future__ import annotations

import re
import threading
from typing import Any

from factory.local.aws.rules import Settings

AMI_DATA_TYPE = "aws:ec2:image"
AMI_ID = re.compile(r"ami-(?:[0-9a-f]{8}|[0-9a-f]{17})")


def install(settings: Settings) -> None:
    from moto.ec2.models import ec2_backends
    from moto.ssm.models import SimpleSystemManagerBackend

    original_put = SimpleSystemManagerBackend.put_parameter
    lock = threading.Lock()
    pending: dict[tuple[int, str], list[Any]] = {}  # (backend, name) -> versions not checked yet

    def is_available_ami(backend: Any, value: str) -> bool:
        if not AMI_ID.fullmatch(value or ""):
            return False
        image = ec2_backends[backend.account_id][backend.region_name].amis.get(value)
        return image is not None and getattr(image, "state", "available") == "available"

    def settle(backend: Any, name: str, param: Any) -> None:
        """The asynchronous check: store the version if its AMI is available, else drop it."""
        with lock:
            queue = pending.get((id(backend), name), [])
            if param in queue:
                queue.remove(param)
            if is_available_ami(backend, param.value):
                backend._parameters[name].append(param)

    def put_parameter(self: Any, name: str, description: str, value: str, parameter_type: str, allowed_pattern: str, keyid: str,
                      overwrite: bool, tags: Any, data_type: str, tier: Any, policies: Any) -> Any:
        with lock:
            param = original_put(self, name, description, value, parameter_type, allowed_pattern, keyid, overwrite, tags, data_type, tier, policies)
            if param.data_type != AMI_DATA_TYPE:
                return param
            # Not stored yet: take it back out of moto's list and check it later.
            versions = self._parameters[name]
            if versions and versions[-1] is param:
                versions.pop()
            if not versions:  # moto answers 500 for a name with no version
                del self._parameters[name]
            queue = pending.setdefault((id(self), name), [])
            param.version = max([v.version for v in versions] + [q.version for q in queue] + [0]) + 1
            queue.append(param)
        if settings.stale_read > 0:
            timer = threading.Timer(settings.stale_read, settle, args=(self, name, param))
            timer.daemon = True
            timer.start()
        else:
            settle(self, name, param)
        return param

    SimpleSystemManagerBackend.put_parameter = put_parameter
    _describe_parameters_pages()
    _ecs_parameters_as_aws_answers()


ECS_PREFIX = "/aws/service/ecs/optimized-ami"
_RELEASE_DATE = re.compile(r"(?<!\d)(20\d{2})(\d{2})(\d{2})(?!\d)")


def _ecs_parameters_as_aws_answers() -> None:
    """The ECS-optimized parameters moto loads from its copy of AWS's tree: each
    `.../recommended` value as JSON text, and each LastModifiedDate the release date the
    image name carries (see the table above)."""
    import ast
    import json
    from datetime import datetime

    from moto.ssm.models import ParameterDict

    original_load = ParameterDict._load_tree_parameters

    def load_tree(self: Any, path: str) -> None:
        original_load(self, path)
        if not path.startswith("ecs/"):
            return
        for name, versions in self.items():
            if not name.startswith(ECS_PREFIX):
                continue
            for p in versions:
                value = p.value
                if isinstance(value, str) and value.startswith("{'"):
                    value = ast.literal_eval(value)
                if isinstance(value, dict):
                    p.value = value = json.dumps(value)
                for m in _RELEASE_DATE.finditer(str(value)):
                    try:
                        p.last_modified_date = datetime(int(m[1]), int(m[2]), int(m[3]))  # naive UTC, as moto keeps it
                        break
                    except ValueError:  # eight digits that are not a date
                        continue

    ParameterDict._load_tree_parameters = load_tree


def _describe_parameters_pages() -> None:
    """DescribeParameters pages of `MaxResults`, as AWS answers (moto always answers 10)."""
    from moto.core.responses import ActionResult
    from moto.ssm.exceptions import ValidationException
    from moto.ssm.responses import SimpleSystemManagerResponse

    def describe_parameters(self: Any) -> Any:
        size = int(self._get_param("MaxResults") or 10)
        if not 1 <= size <= 50:
            raise ValidationException(f"1 validation error detected: Value '{size}' at 'maxResults' failed to satisfy constraint: "
                                      "Member must have value less than or equal to 50")
        start = int(str(self._get_param("NextToken") or "0").strip() or 0)
        # moto's backend, not an AWS read: everything it holds, cut here into MaxResults pages.
        found = self.ssm_backend.describe_parameters(self._get_param("Filters"), self._get_param("ParameterFilters"))  # cut below (MaxResults)
        page = [p.describe_response_object(False) for p in found[start : start + size]]  # at most MaxResults
        response: dict[str, Any] = {"Parameters": page}
        if start + size < len(found):
            response["NextToken"] = str(start + size)
        return ActionResult(response)

    SimpleSystemManagerResponse.describe_parameters = describe_parameters
