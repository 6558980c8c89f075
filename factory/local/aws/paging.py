"""Pages, as AWS gives them, at a page size small enough that page 2 always exists in tests.

moto answers every Describe in one page (and truncates some lists at 15 without a
token). AWS pages: Batch's DescribeComputeEnvironments/DescribeJobQueues return at most
100 items and a `nextToken` whether or not `maxResults` is given (Batch API reference);
EC2's Describe calls page when `MaxResults` is given and otherwise answer everything
(EC2 API reference, "Pagination", which recommends always paging). Ours:

- the operations in `PAGED` are answered a page at a time: at most `page_size` items
  (default 2) and a `nextToken`; Batch's always, EC2's when `MaxResults` is given (at
  min(MaxResults, page_size), which AWS allows: "a call can return fewer results than
  the maximum even when more are available");
- a token is tied to the request it continues: a token replayed with other filters is
  refused, as AWS refuses it;
- a token remembers which items were answered, not how many: the next page is the items
  not yet answered, so an item deleted (or made) between two pages never makes a reader
  skip another, as it would with an offset (a queue deleted while register pages through
  the account's queues once made register miss its own queue and create it again);
- DescribeInstances refuses `MaxResults` beside instance ids, as AWS does ("You cannot
  specify this parameter and the instance IDs parameter in the same request", botocore's
  EC2 model): a paged read of given instances must filter on `instance-id` instead.

The full answer is asked of moto (paging parameters stripped, its own limit lifted) and
sliced here, so moto's own truncation never shows.
"""

from __future__ import annotations

import base64
import hashlib
import json
import urllib.parse
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

from factory.local.aws.operations import Call


@dataclass(frozen=True)
class Paged:
    list_key: str  # the list in the answer (EC2: the XML element holding <item>s)
    always: bool  # pages without a max parameter too (Batch), or only with one (EC2)
    id_keys: tuple[str, ...]  # what names an item (its fields, or an EC2 item's child elements)
    moto_max: int | None = None  # moto's own limit to lift (it truncates without a token)


PAGED: dict[str, Paged] = {
    "batch:DescribeComputeEnvironments": Paged("computeEnvironments", always=True, id_keys=("computeEnvironmentArn",)),
    "batch:DescribeJobQueues": Paged("jobQueues", always=True, id_keys=("jobQueueArn",)),
    "ec2:DescribeImages": Paged("imagesSet", always=False, id_keys=("imageId",)),
    "ec2:DescribeLaunchTemplates": Paged("launchTemplates", always=False, id_keys=("launchTemplateId",), moto_max=1000),
    "ec2:DescribeLaunchTemplateVersions": Paged("launchTemplateVersionSet", always=False, id_keys=("launchTemplateId", "versionNumber"), moto_max=1000),
    "ec2:DescribeVolumes": Paged("volumeSet", always=False, id_keys=("volumeId",)),
    "ec2:DescribeSnapshots": Paged("snapshotSet", always=False, id_keys=("snapshotId",)),
    "ec2:DescribeSubnets": Paged("subnetSet", always=False, id_keys=("subnetId",)),
    "ec2:DescribeVpcs": Paged("vpcSet", always=False, id_keys=("vpcId",)),
    "ec2:DescribeSecurityGroups": Paged("securityGroupInfo", always=False, id_keys=("groupId",)),
    "ec2:DescribeInstances": Paged("reservationSet", always=False, id_keys=("reservationId",)),
}

TOKEN_KEYS = ("NextToken", "nextToken")
MAX_KEYS = ("MaxResults", "maxResults")


class BadToken(ValueError):
    """A paging request AWS refuses: a next token that this request did not get."""

    code = "InvalidParameterValue"


class MaxResultsWithIds(BadToken):
    """`MaxResults` beside the ids DescribeInstances takes only without it."""

    code = "InvalidParameterCombination"


def wanted_page(call: Call, page_size: int) -> tuple[frozenset[str], int] | None:
    """(the items already answered, size) of the page `call` asks for, or None when it is
    answered whole."""
    rule = PAGED.get(call.name)
    if rule is None:
        return None
    given = next((call.params[k] for k in MAX_KEYS if call.params.get(k) not in (None, "")), None)
    if given is not None and call.name == "ec2:DescribeInstances" and any(k.startswith("InstanceId.") for k in call.params):
        raise MaxResultsWithIds("The parameter instancesSet cannot be used with the parameter maxResults")
    if given is None and not rule.always:
        return None
    size = min(int(given), page_size) if given is not None else page_size
    token = next((call.params[k] for k in TOKEN_KEYS if call.params.get(k)), None)
    return (_answered(token, call) if token else frozenset()), max(1, size)


def request_for_moto(call: Call, body: bytes) -> bytes:
    """The request body moto should get: no paging parameters, its own limit lifted."""
    rule = PAGED[call.name]
    if call.protocol == "query":
        fields = [(k, v) for k, v in urllib.parse.parse_qsl(body.decode(), keep_blank_values=True) if k not in TOKEN_KEYS + MAX_KEYS]
        if rule.moto_max:
            fields.append(("MaxResults", str(rule.moto_max)))
        return urllib.parse.urlencode(fields).encode()
    params = {k: v for k, v in call.params.items() if k not in TOKEN_KEYS + MAX_KEYS}
    return json.dumps(params).encode()


def page_of(call: Call, body: bytes, answered: frozenset[str], size: int) -> bytes:
    """moto's whole answer cut to one page (the first `size` items not yet `answered`), with a
    token when more follow."""
    rule = PAGED[call.name]
    if call.protocol == "query":
        return _page_xml(call, body, rule, answered, size)
    data = json.loads(body or b"{}")
    left = [item for item in data.get(rule.list_key) or [] if _key(rule, lambda k, item=item: item.get(k)) not in answered]
    data[rule.list_key] = left[:size]
    data.pop("nextToken", None)
    if len(left) > size:
        data["nextToken"] = _token(answered | {_key(rule, lambda k, item=item: item.get(k)) for item in left[:size]}, call)
    return json.dumps(data).encode()


def _page_xml(call: Call, body: bytes, rule: Paged, answered: frozenset[str], size: int) -> bytes:
    root = ET.fromstring(body)
    ns = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
    if ns:
        ET.register_namespace("", ns.strip("{}"))
    holder = root.find(f"{ns}{rule.list_key}")
    items = list(holder) if holder is not None else []

    def key(item: ET.Element) -> str:
        return _key(rule, lambda k: item.findtext(f"{ns}{k}"))

    left = [item for item in items if key(item) not in answered]
    for item in items:
        if item not in left[:size]:
            holder.remove(item)
    for old in root.findall(f"{ns}nextToken"):
        root.remove(old)
    if len(left) > size:
        token = ET.SubElement(root, f"{ns}nextToken")
        token.text = _token(answered | {key(item) for item in left[:size]}, call)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def _key(rule: Paged, field: Any) -> str:
    """A short, stable name of one item (a hash of its id fields), for the token to hold."""
    return hashlib.sha256(json.dumps([str(field(k)) for k in rule.id_keys]).encode()).hexdigest()[:10]


def _signature(call: Call) -> str:
    stable = {k: v for k, v in call.params.items() if k not in TOKEN_KEYS + MAX_KEYS}
    return hashlib.sha256(json.dumps([call.name, stable], sort_keys=True, default=str).encode()).hexdigest()[:12]


def _token(answered: frozenset[str], call: Call) -> str:
    return base64.urlsafe_b64encode(json.dumps({"answered": sorted(answered), "request": _signature(call)}).encode()).decode()


def _answered(token: str, call: Call) -> frozenset[str]:
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        answered, request = frozenset(str(k) for k in data["answered"]), data["request"]
    except (ValueError, KeyError, TypeError):
        raise BadToken(f"the next token {token[:20]}... is not valid") from None
    if request != _signature(call):
        raise BadToken("the next token was given for another request (different filters or names)")
    return answered
