"""Which AWS operation an HTTP request to the local cloud is, and how to answer it with an error.

The local cloud's own layer (faults, paging, the call log) works on requests before moto
sees them. It needs each request's service and operation, and must answer in the
service's own protocol so botocore parses the error as it would AWS's:

| service | protocol | operation from | error body |
| --- | --- | --- | --- |
| ec2 | query (EC2 flavour) | `Action` form field | `<Response><Errors><Error>` XML |
| iam | query | `Action` form field | `<ErrorResponse><Error>` XML |
| ssm | JSON 1.1 | `X-Amz-Target` header | `{"__type", "message"}` |
| batch | REST-JSON | method + path, from botocore's model | `{"__type", "message"}` + `x-amzn-ErrorType` |

The service comes from the request's SigV4 credential scope (`.../REGION/SERVICE/aws4_request`).
"""

from __future__ import annotations

import json
import re
import urllib.parse
from dataclasses import dataclass, field
from functools import cache
from typing import Any

_SCOPE = re.compile(r"Credential=[^/]+/\d{8}/([^/]+)/([^/]+)/aws4_request")


@dataclass
class Call:
    """One request: its service, operation and parameters (form fields or the JSON body)."""

    service: str
    operation: str
    region: str
    protocol: str  # query | json | rest-json
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """`service:Operation`, the spelling IAM policies and `factory local fault` use."""
        return f"{self.service}:{self.operation}"


def identify(environ: dict[str, Any], body: bytes) -> Call | None:
    """The AWS call a WSGI request makes, or None (moto's own API, a health check)."""
    match = _SCOPE.search(environ.get("HTTP_AUTHORIZATION", ""))
    if not match:
        return None
    region, service = match.group(1), match.group(2)
    protocol = _protocol(service)
    if protocol == "query":
        params = {k: v[-1] for k, v in urllib.parse.parse_qs(body.decode(errors="replace"), keep_blank_values=True).items()}
        query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
        op = params.get("Action") or (query.get("Action") or [""])[-1]
        return Call(service, op, region, protocol, params) if op else None
    if protocol == "json":
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        op = target.rsplit(".", 1)[-1]
        return Call(service, op, region, protocol, _json(body)) if op else None
    op = _rest_operation(service, environ.get("REQUEST_METHOD", "GET"), environ.get("PATH_INFO", ""))
    return Call(service, op, region, protocol, _json(body)) if op else None


def error_response(call: Call, code: str, message: str, status: int) -> tuple[str, list[tuple[str, str]], bytes]:
    """(status line, headers, body) of an AWS error for `call`, in its service's protocol."""
    reason = {400: "Bad Request", 403: "Forbidden", 429: "Too Many Requests", 500: "Internal Server Error", 503: "Service Unavailable"}
    status_line = f"{status} {reason.get(status, 'Error')}"
    if call.protocol == "query":
        message_xml = _xml_escape(message)
        if call.service == "ec2":
            body = (
                f"<?xml version='1.0' encoding='UTF-8'?>\n<Response><Errors><Error><Code>{code}</Code>"
                f"<Message>{message_xml}</Message></Error></Errors><RequestID>factory-local</RequestID></Response>"
            )
        else:
            body = (
                f"<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code><Message>{message_xml}</Message></Error>"
                "<RequestId>factory-local</RequestId></ErrorResponse>"
            )
        return status_line, [("Content-Type", "text/xml")], body.encode()
    headers = [("Content-Type", "application/x-amz-json-1.1" if call.protocol == "json" else "application/json"), ("x-amzn-ErrorType", code)]
    return status_line, headers, json.dumps({"__type": code, "message": message}).encode()


def _xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _json(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body or b"{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


@cache
def _model(service: str) -> Any:
    import botocore.session

    return botocore.session.get_session().get_service_model(service)


@cache
def _protocol(service: str) -> str:
    try:
        protocol = _model(service).protocol
    except Exception:  # a service botocore does not know: moto answers it as it likes
        return "rest-json"
    return {"ec2": "query", "query": "query", "json": "json"}.get(protocol, "rest-json")


@cache
def _rest_routes(service: str) -> tuple[tuple[str, str, str], ...]:
    model = _model(service)
    routes = []
    for op in model.operation_names:
        http = model.operation_model(op).http
        routes.append((http.get("method", "POST"), http.get("requestUri", "/").split("?")[0].rstrip("/"), op))
    return tuple(routes)


def _rest_operation(service: str, method: str, path: str) -> str:
    """The operation at METHOD PATH. PATH arrives decoded, so a label that ends the URI may
    hold slashes: an ARN (`/v1/tags/arn:aws:batch:...:job-queue/NAME`, TagResource). Labels
    without slashes are tried first, so `/a/{id}` never takes `/a/{id}/b`'s requests."""
    path = path.rstrip("/")
    for last_label in ("[^/]+", ".+"):
        for m, uri, op in _rest_routes(service):
            pattern = re.sub(r"\{[^}]+\}", "[^/]+", re.sub(r"\{[^}]+\}$", "@LAST@", uri)).replace("@LAST@", last_label)
            if m == method and re.fullmatch(pattern, path):
                return op
    return ""
