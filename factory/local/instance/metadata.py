"""A local instance metadata service, IMDSv2 only, for an instance of the local cloud.

It answers what the grow agent (and anything else on the instance) asks EC2's metadata
service: `PUT /latest/api/token` gives a session token; every `GET /latest/meta-data/...`
must carry it (`X-aws-ec2-metadata-token`) or gets 401, as with `HttpTokens=required`
(EC2 User Guide, "Use the Instance Metadata Service to access instance metadata").
Served on loopback, one per instance; the agent is pointed at it by its config.

    with MetadataService.start(instance_id="i-...", zone="us-east-1a", instance_type="c6i.large") as imds:
        imds.endpoint   # http://127.0.0.1:PORT
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class MetadataService:
    instance_id: str
    zone: str
    instance_type: str
    # The instance profile's role: its credentials are served as EC2 serves them
    # (iam/security-credentials/ROLE), here moto's dummy keys. None: no instance profile.
    role: str | None = None
    server: Any = field(default=None, repr=False)
    tokens: set[str] = field(default_factory=set, repr=False)

    @property
    def region(self) -> str:
        return self.zone[:-1]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def values(self) -> dict[str, str]:
        values = {
            "instance-id": self.instance_id,
            "instance-type": self.instance_type,
            "placement/availability-zone": self.zone,
            "placement/region": self.region,
        }
        if self.role:
            import datetime
            import json

            from factory.local.aws.moto_server import LOCAL_ACCESS_KEY, LOCAL_SECRET_KEY

            expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=6)
            values["iam/security-credentials/"] = self.role
            values[f"iam/security-credentials/{self.role}"] = json.dumps({
                "Code": "Success", "Type": "AWS-HMAC", "AccessKeyId": LOCAL_ACCESS_KEY, "SecretAccessKey": LOCAL_SECRET_KEY,
                "Token": "local-cloud-session-token", "Expiration": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "LastUpdated": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            })
        return values

    @classmethod
    def start(cls, instance_id: str, zone: str, instance_type: str, role: str | None = None) -> MetadataService:
        service = cls(instance_id=instance_id, zone=zone, instance_type=instance_type, role=role)

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet: the agent logs what it learns
                pass

            def _send(self, status: int, body: str = "") -> None:
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_PUT(self) -> None:
                if self.path != "/latest/api/token" or not self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
                    self._send(400)
                    return
                token = secrets.token_urlsafe(32)
                service.tokens.add(token)
                self._send(200, token)

            def do_GET(self) -> None:
                if self.headers.get("X-aws-ec2-metadata-token") not in service.tokens:
                    self._send(401)  # IMDSv1 is off
                    return
                key = self.path.removeprefix("/latest/meta-data/")
                value = service.values().get(key)
                if value is None:
                    self._send(404)
                else:
                    self._send(200, value)

        service.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=service.server.serve_forever, name=f"imds-{instance_id}", daemon=True).start()
        return service

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def __enter__(self) -> MetadataService:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
