"""Faults on demand: the next N calls of an operation fail the way AWS fails.

`factory local fault ec2:CreateLaunchTemplate --kind error --times 1` arms a fault in
the running local cloud; the tests use the same control endpoint. Kinds:

| kind | what the caller sees | botocore (standard retry mode) |
| --- | --- | --- |
| `error` | an AWS error (HTTP 400, code `InjectedFault` unless `--code` says otherwise); the call is not made | not retried: the command fails |
| `throttle` | the service's throttling error: EC2 `RequestLimitExceeded` (503), Batch `TooManyRequestsException` (429), SSM `ThrottlingException`, IAM `Throttling`; the call is not made | retried with backoff |
| `drop` | the connection closes with no answer; the call is not made | retried (a connection error) |
| `broken` | the call is made and answers as usual, but what it made fails later: a volume from `ec2:CreateVolume` goes to `error` instead of `available`, an AMI from `ec2:CopyImage` to `failed` | nothing to retry: the caller sees it in the state |

`--caller packer` (or `command:bake`, ...) fails only the calls of that caller, as the call
log names it (`aws_server.caller`): `ec2:CreateTags` is made by Packer (the AMI's tags) and
by factory after it (the image manifest's), and each must be failed on its own.

The control endpoint lives beside moto's own API: `POST /_factory/faults` with
`{"operation": "ec2:CreateLaunchTemplate", "kind": "error", "times": 1, "code": ..., "caller": ...}`,
`GET` lists what is armed, `DELETE` clears everything.
"""

from __future__ import annotations

import json
import socket
import threading
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from typing import Any

from factory.errors import LocalCloudError, UsageError
from factory.local.aws.operations import Call, error_response

CONTROL_PATH = "/_factory/faults"
KINDS = ("error", "throttle", "drop", "broken")
BROKEN = ("ec2:CreateVolume", "ec2:CopyImage")  # what `broken` can break (rules.ebs: the volume errs; rules.ami_copy: the copy fails)
# How the layer tells the rule that the call it lets through is to be broken: a request
# header moto hands to the rule (X-Factory-Broken), set in the WSGI environ.
BROKEN_HEADER = "X-Factory-Broken"
BROKEN_HEADER_ENVIRON = "HTTP_X_FACTORY_BROKEN"
THROTTLE = {  # service -> (code, HTTP status), as each service throttles
    "ec2": ("RequestLimitExceeded", 503),
    "batch": ("TooManyRequestsException", 429),
    "ssm": ("ThrottlingException", 400),
    "iam": ("Throttling", 400),
}


@dataclass
class Fault:
    operation: str  # service:Operation
    kind: str = "error"
    times: int = 1
    code: str = ""
    caller: str = ""  # only this caller's calls (aws_server.caller: packer, command:bake, ...); empty: anyone's

    def __post_init__(self) -> None:
        service, _, op = self.operation.partition(":")
        if not service or not op or not op[:1].isupper():
            raise UsageError(f"fault {self.operation!r}: name it SERVICE:Operation as IAM does, e.g. ec2:CreateLaunchTemplate")
        self.operation = f"{service.lower()}:{op}"
        if self.kind not in KINDS:
            raise UsageError(f"fault kind {self.kind!r}: use one of {', '.join(KINDS)}")
        if self.kind == "broken" and self.operation not in BROKEN:
            raise UsageError(f"fault kind broken: only {', '.join(BROKEN)} makes something that can fail later")
        if int(self.times) < 1:
            raise UsageError(f"fault times {self.times}: arm at least one call")
        self.times = int(self.times)


class FaultBoard:
    """The armed faults of one local cloud (in its server process), thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._armed: list[Fault] = []

    def arm(self, fault: Fault) -> None:
        with self._lock:
            self._armed.append(fault)

    def clear(self) -> None:
        with self._lock:
            self._armed.clear()

    def listing(self) -> list[dict[str, Any]]:
        with self._lock:
            return [asdict(f) for f in self._armed]

    def take(self, call: Call, caller: str = "") -> Fault | None:
        """The fault armed for this call by this caller, counted down (None when none is armed)."""
        with self._lock:
            for fault in self._armed:
                if fault.operation == call.name and fault.caller in ("", caller):
                    fault.times -= 1
                    if fault.times <= 0:
                        self._armed.remove(fault)
                    return fault
        return None


def respond(fault: Fault, call: Call, environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """Answer `call` as the fault says (for `drop`: close the connection, answer nothing)."""
    if fault.kind == "drop":
        sock = environ.get("werkzeug.socket")
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        raise ConnectionAbortedError(f"fault: dropped {call.name}")
    if fault.kind == "throttle":
        code, status = THROTTLE.get(call.service, ("ThrottlingException", 400))
        message = f"Rate exceeded (throttled by `factory local fault` on {call.name})"
    else:
        code, status = fault.code or "InjectedFault", 400
        message = f"failed by `factory local fault` on {call.name}"
    status_line, headers, body = error_response(call, code, message, status)
    start_response(status_line, headers + [("Content-Length", str(len(body)))])
    return [body]


# -- the client side: `factory local fault` and the tests -------------------------------


def arm(endpoint: str, fault: Fault) -> None:
    _control(endpoint, "POST", asdict(fault))


def clear(endpoint: str) -> None:
    _control(endpoint, "DELETE")


def armed(endpoint: str) -> list[dict[str, Any]]:
    return _control(endpoint, "GET")["faults"]


def _control(endpoint: str, method: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
    data = json.dumps(payload).encode() if payload is not None else None
    req = urllib.request.Request(endpoint + CONTROL_PATH, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        raise LocalCloudError(f"the local cloud refused the fault: {exc.read().decode(errors='replace')}") from None
    except OSError as exc:
        raise LocalCloudError(f"cannot reach the local cloud at {endpoint} ({exc}); is `factory local up` running?") from None
