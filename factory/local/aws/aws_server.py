"""The local cloud's AWS endpoint: moto's server with our layer around it.

`python -m factory.local.aws.aws_server -p PORT` serves, on loopback, moto's WSGI app with:

- `factory.local.aws.rules`: AWS's rules taught to moto's backends (Batch states and update
  rules, EC2 launch template versions), installed in this process before the first request;
- paging (`factory.local.aws.paging`): Describe calls answered a page at a time;
- faults (`factory.local.aws.faults`): the next N calls of an operation fail on demand;
- publish-base (`factory.local.aws.publish`): AWS releasing a new ECS-optimized AMI;
- Batch jobs run as containers on the Docker engine DOCKER_HOST names in this process
  (`factory.local.aws.rules.batch_jobs`), removed when the server stops;
- a call log: every AWS call's `service:Operation` (`GET /_factory/calls`, with who made
  each in `callers`), and, when
  `$FACTORY_LOCAL_CALL_LOG` names a file, one line per call appended to it: who called
  (the `factory` command, `packer`, the local cloud's own set-up, or `other`) and what.
  The tests prove `factory iam-policy` against that file.

`factory local up` and the tests start this same server (`moto_server.MotoServer`), so
what a user rehearses is what the tests prove. docs/local-cloud.md has the whole table.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import signal
import sys
import threading
from typing import Any, Callable, Iterable

from factory.local.aws import faults, paging, publish
from factory.local.aws.operations import Call, error_response, identify

CALLS_PATH = "/_factory/calls"
ENV_STATE_DELAY = "FACTORY_LOCAL_STATE_DELAY"
ENV_PAGE_SIZE = "FACTORY_LOCAL_PAGE_SIZE"
ENV_CALL_LOG = "FACTORY_LOCAL_CALL_LOG"
ENV_SNAPSHOT_RELEASE_DELAY = "FACTORY_LOCAL_SNAPSHOT_RELEASE_DELAY"
ENV_VOLUME_DELAY = "FACTORY_LOCAL_VOLUME_DELAY"
ENV_ROLLING_DELAY = "FACTORY_LOCAL_ROLLING_DELAY"
_COMMAND = re.compile(r"factory-command/(\S+)")
# The app id a build host's AWS config gives its AWS CLI (BuildHost.use_instance_profile):
# calls the builder makes with its instance profile, as botocore marks them (`app/<id>`).
BUILDER_APP_ID = "factory-builder"
DEFAULT_PAGE_SIZE = 2


class Layer:
    """WSGI middleware: control endpoints, faults, paging and the call log around moto's app."""

    def __init__(self, app: Callable[..., Iterable[bytes]], page_size: int = DEFAULT_PAGE_SIZE, call_log: str | None = None):
        self.app = app
        self.page_size = page_size
        self.call_log = call_log
        self.board = faults.FaultBoard()
        self.calls: list[str] = []
        self.callers: list[str] = []  # who made each of `calls` (caller())
        self._calls_lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == faults.CONTROL_PATH:
            return self._faults(environ, start_response)
        if path == CALLS_PATH:
            return self._calls(environ, start_response)
        if path == publish.CONTROL_PATH:
            return self._publish_base(environ, start_response)
        body = _read_body(environ)
        call = identify(environ, body)
        if call is None:
            return self.app(_with_body(environ, body), start_response)
        who = caller(environ.get("HTTP_USER_AGENT", ""))
        self._record(call, who)
        fault = self.board.take(call, who)
        if fault is not None and fault.kind == "broken":  # the call is made; the rule breaks what it makes
            environ = dict(environ, **{faults.BROKEN_HEADER_ENVIRON: "1"})
        elif fault is not None:
            return faults.respond(fault, call, environ, start_response)
        try:
            page = paging.wanted_page(call, self.page_size)
        except paging.BadToken as exc:
            code = exc.code if call.protocol == "query" else "ClientException"
            status_line, headers, err = error_response(call, code, str(exc), 400)
            start_response(status_line, headers + [("Content-Length", str(len(err)))])
            return [err]
        if call.name not in paging.PAGED:
            return self.app(_with_body(environ, body), start_response)
        return self._paged(call, environ, body, page, start_response)

    def _paged(self, call: Call, environ: dict[str, Any], body: bytes, page: tuple[int, int] | None, start_response: Any) -> Iterable[bytes]:
        """moto's whole answer (its own limit lifted), cut to the page asked for, if any."""
        captured: dict[str, Any] = {}

        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
            captured["status"], captured["headers"] = status, headers
            return lambda _data: None

        chunks = self.app(_with_body(environ, paging.request_for_moto(call, body)), capture)
        try:
            answer = b"".join(chunks)
        finally:
            close = getattr(chunks, "close", None)
            if close:
                close()
        if page is not None and captured["status"].startswith("200"):
            answer = paging.page_of(call, answer, *page)
        headers = [(k, v) for k, v in captured["headers"] if k.lower() != "content-length"]
        start_response(captured["status"], headers + [("Content-Length", str(len(answer)))])
        return [answer]

    def _record(self, call: Call, who: str) -> None:
        with self._calls_lock:
            self.calls.append(call.name)
            self.callers.append(who)
            if self.call_log:
                with open(self.call_log, "a") as log:
                    log.write(f"{who}\t{call.name}\n")

    def _faults(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        from factory.errors import UsageError

        method = environ.get("REQUEST_METHOD", "GET")
        try:
            if method == "POST":
                self.board.arm(faults.Fault(**json.loads(_read_body(environ) or b"{}")))
            elif method == "DELETE":
                self.board.clear()
        except (UsageError, TypeError, ValueError) as exc:
            return _json(start_response, {"error": str(exc)}, "400 Bad Request")
        return _json(start_response, {"faults": self.board.listing()})

    def _publish_base(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        from factory.errors import UsageError

        try:
            return _json(start_response, publish.handle(_read_body(environ)))
        except UsageError as exc:
            return _json(start_response, {"error": exc.message}, "400 Bad Request")

    def _calls(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        with self._calls_lock:
            if environ.get("REQUEST_METHOD") == "DELETE":
                self.calls.clear()
                self.callers.clear()
            return _json(start_response, {"calls": list(self.calls), "callers": list(self.callers)})


def caller(agent: str) -> str:
    """Who made a call, from its user agent: `command:NAME`, `packer`, `factory-local`,
    `builder` (a build host's AWS CLI with its instance profile) or `other`."""
    if "factory-local" in agent:
        return "factory-local"
    if f"app/{BUILDER_APP_ID}" in agent:
        return "builder"
    found = _COMMAND.search(agent)
    if found:
        return f"command:{found.group(1)}"
    if "Packer" in agent or "exec-env/factory-packer" in agent:
        return "packer"
    return "other"


def _read_body(environ: dict[str, Any]) -> bytes:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    return environ["wsgi.input"].read(length) if length > 0 else b""


def _with_body(environ: dict[str, Any], body: bytes) -> dict[str, Any]:
    environ = dict(environ)
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))
    return environ


def _json(start_response: Any, payload: dict[str, Any], status: str = "200 OK") -> list[bytes]:
    body = json.dumps(payload).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def make_app(state_delay: float, page_size: int, snapshot_release_delay: float = 0.0, volume_delay: float = 0.0,
             rolling_delay: float | None = None, copy_delay: float = 0.3, stale_read: float | None = None) -> Layer:
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

    from factory.local.aws import rules

    stale_read = min(0.3, state_delay / 2) if stale_read is None else stale_read
    rules.install(rules.Settings(state_delay=state_delay, stale_read=stale_read, snapshot_release_delay=snapshot_release_delay,
                                 volume_delay=volume_delay, job_step=min(0.3, state_delay / 2), rolling_delay=rolling_delay,
                                 copy_delay=copy_delay))
    return Layer(DomainDispatcherApplication(create_backend_app), page_size=page_size, call_log=os.environ.get(ENV_CALL_LOG) or None)


def main(argv: list[str] | None = None) -> None:
    from moto.moto_server.werkzeug_app import MotoRequestHandler
    from werkzeug.serving import run_simple

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, required=True)
    parser.add_argument("--state-delay", type=float, default=float(os.environ.get(ENV_STATE_DELAY, "1.0")))
    parser.add_argument("--page-size", type=int, default=int(os.environ.get(ENV_PAGE_SIZE, str(DEFAULT_PAGE_SIZE))))
    parser.add_argument("--snapshot-release-delay", type=float, default=float(os.environ.get(ENV_SNAPSHOT_RELEASE_DELAY, "0")))
    parser.add_argument("--volume-delay", type=float, default=float(os.environ.get(ENV_VOLUME_DELAY, "0")))
    parser.add_argument("--rolling-delay", type=float, default=float(os.environ[ENV_ROLLING_DELAY]) if os.environ.get(ENV_ROLLING_DELAY) else None)
    parser.add_argument("--copy-delay", type=float, default=0.3)  # seconds an AMI copy is pending (rules.ami_copy)
    # seconds of old reads after an update, and before SSM has checked an aws:ec2:image value
    # (rules.Settings.stale_read; default: half the state delay, at most 0.3 s)
    parser.add_argument("--stale-read", type=float, default=None)
    args = parser.parse_args(argv)
    app = make_app(args.state_delay, args.page_size, args.snapshot_release_delay, args.volume_delay, args.rolling_delay, args.copy_delay,
                   args.stale_read)
    # SIGTERM (MotoServer.stop, `factory local down`) exits cleanly, so atexit removes the job containers
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    run_simple(args.host, args.port, app, threaded=True, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main()
