"""The instance's identity from the instance metadata service, IMDSv2 only.

A session token first (PUT /latest/api/token), then every read with it; the IMDSv1
fallback is never used (the launch template sets HttpTokens=required). The endpoint is
configurable so that the local rehearsal's IMDSv2 endpoint can stand in.
EC2 User Guide, "Use the Instance Metadata Service to access instance metadata".
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from dataclasses import dataclass

DEFAULT_ENDPOINT = "http://169.254.169.254"
TOKEN_TTL_SECONDS = 21600


class MetadataError(Exception):
    pass


@dataclass(frozen=True)
class Identity:
    instance_id: str
    zone: str
    region: str
    instance_type: str


class Imds:
    def __init__(self, endpoint: str = DEFAULT_ENDPOINT, timeout: float = 2.0):
        self.endpoint = endpoint.rstrip("/")
        self.timeout = timeout
        self._token: str | None = None
        self._token_expires = 0.0

    def token(self) -> str:
        if self._token is None or time.monotonic() > self._token_expires:
            req = urllib.request.Request(
                f"{self.endpoint}/latest/api/token", method="PUT",
                headers={"X-aws-ec2-metadata-token-ttl-seconds": str(TOKEN_TTL_SECONDS)},
            )
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                self._token = r.read().decode().strip()
            self._token_expires = time.monotonic() + TOKEN_TTL_SECONDS - 60
        return self._token

    def get(self, path: str) -> str:
        req = urllib.request.Request(f"{self.endpoint}/latest/meta-data/{path}", headers={"X-aws-ec2-metadata-token": self.token()})
        with urllib.request.urlopen(req, timeout=self.timeout) as r:
            return r.read().decode().strip()

    def identity(self, attempts: int = 30, wait: float = 1.0) -> Identity:
        """Who this instance is; retried while the metadata service is not up yet (early boot)."""
        last: Exception | None = None
        for _ in range(attempts):
            try:
                zone = self.get("placement/availability-zone")
                return Identity(
                    instance_id=self.get("instance-id"),
                    zone=zone,
                    region=self.get("placement/region"),
                    instance_type=self.get("instance-type"),
                )
            except (OSError, urllib.error.URLError) as exc:
                last = exc
                self._token = None
                time.sleep(wait)
        raise MetadataError(f"the instance metadata service at {self.endpoint} did not answer: {last}")
