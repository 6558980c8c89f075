"""The one place boto3 clients are made, and where botocore errors become user messages.

Region, credentials and endpoint come from the usual AWS settings (AWS_REGION,
AWS_PROFILE, AWS_ENDPOINT_URL, ...), so pointing `AWS_ENDPOINT_URL` at moto's server
runs the unchanged code against the local cloud. Tests pass a `Clients` made for their
moto server instead of patching anything.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator

from factory.errors import AwsError

# Per attempt; a call gives up after MAX_ATTEMPTS attempts. botocore's standard retry mode
# retries throttling errors, 5xx answers and dropped connections with jittered exponential
# backoff, as every AWS SDK does; the adaptive mode's client-side rate limiter helps many
# concurrent clients, not factory's few calls at a time (docs/local-cloud.md, "Retries").
CONNECT_TIMEOUT_SECONDS = 5
READ_TIMEOUT_SECONDS = 10
MAX_ATTEMPTS = 5


_command: str | None = None  # the CLI command running now (its AWS calls carry it)


def resource_tags(resource: dict[str, Any]) -> dict[str, str]:
    """An EC2 resource's (image, instance, volume) `Tags` as a dict; none when it has none."""
    return {t["Key"]: t["Value"] for t in resource.get("Tags") or []}


def set_command(name: str | None) -> str | None:
    """Name the CLI command whose AWS calls follow; returns the previous one."""
    global _command
    previous, _command = _command, name
    return previous


def user_agent(agent: str = "factory") -> str:
    """`factory`, plus `factory-command/NAME` while a CLI command runs."""
    return agent + (f" factory-command/{_command}" if _command else "")


@dataclass
class Clients:
    """Makes and caches boto3 clients for one region (and optionally one endpoint)."""

    region: str | None = None
    endpoint_url: str | None = None
    agent: str = "factory"  # the user agent's mark; the local cloud's own set-up uses "factory-local"
    # An assumed role's temporary credentials (sts:AssumeRole's `Credentials`): this account
    # instead of the environment's. Kept in memory only, never in a repr, a log or a file.
    credentials: dict[str, Any] | None = field(default=None, repr=False)
    _session: Any = field(default=None, repr=False)
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    def client(self, service: str) -> Any:
        if service not in self._cache:
            import boto3
            from botocore.config import Config

            if self._session is None:
                if self.credentials:
                    self._session = boto3.session.Session(
                        region_name=self.region, aws_access_key_id=self.credentials["AccessKeyId"],
                        aws_secret_access_key=self.credentials["SecretAccessKey"], aws_session_token=self.credentials["SessionToken"])
                else:
                    self._session = boto3.session.Session(region_name=self.region)
            region = self.region or self._session.region_name
            if not region:
                raise AwsError("no AWS region: set `region:` in the spec, pass --region, or set AWS_REGION")
            # Fail within about a minute when AWS cannot be reached (a firewall that drops
            # packets, a proxy that never answers): botocore's defaults (60 s connect and
            # read timeouts, each retried) would otherwise hang for many minutes.
            config = Config(
                retries={"mode": "standard", "max_attempts": MAX_ATTEMPTS},
                connect_timeout=CONNECT_TIMEOUT_SECONDS,
                read_timeout=READ_TIMEOUT_SECONDS,
                user_agent_extra=user_agent(self.agent),
            )
            kwargs: dict[str, Any] = {"region_name": region, "config": config}
            if self.endpoint_url:
                kwargs["endpoint_url"] = self.endpoint_url
            self._cache[service] = self._session.client(service, **kwargs)
        return self._cache[service]

    def ec2(self) -> Any:
        return self.client("ec2")

    def ssm(self) -> Any:
        return self.client("ssm")

    def batch(self) -> Any:
        return self.client("batch")


@contextlib.contextmanager
def aws_errors(doing: str) -> Iterator[None]:
    """Turn botocore failures inside the block into an AwsError saying what to do."""
    from botocore.exceptions import (
        ClientError,
        ConnectionClosedError,
        EndpointConnectionError,
        NoCredentialsError,
        NoRegionError,
        PartialCredentialsError,
        ReadTimeoutError,
    )

    try:
        yield
    except (NoCredentialsError, PartialCredentialsError):
        raise AwsError(
            f"{doing}: no AWS credentials. Set AWS_PROFILE, or run `aws configure`, "
            "or use `--cloud local` for the local cloud."
        ) from None
    except NoRegionError:
        raise AwsError(f"{doing}: no AWS region: set `region:` in the spec or AWS_REGION") from None
    except EndpointConnectionError as exc:
        raise AwsError(
            f"{doing}: cannot reach {exc.kwargs.get('endpoint_url', 'the AWS endpoint')}. "
            "Is the network up, or (for the local cloud) is `factory local up` running?"
        ) from None
    except (ReadTimeoutError, ConnectionClosedError) as exc:
        raise AwsError(
            f"{doing}: {exc.kwargs.get('endpoint_url', 'the AWS endpoint')} did not answer "
            f"(no reply within {READ_TIMEOUT_SECONDS}s, {MAX_ATTEMPTS} attempts). Is the network or a "
            "proxy (HTTPS_PROXY) blocking AWS, or (for the local cloud) is `factory local up` running?"
        ) from None
    except ClientError as exc:
        code = error_code(exc) or "Error"
        msg = error_message(exc) or str(exc)
        hint = ""
        if code in {"UnauthorizedOperation", "AccessDenied", "AccessDeniedException"}:
            hint = " Check that your role may make this call (see README, 'Real AWS')."
        elif code in {"ExpiredToken", "ExpiredTokenException", "RequestExpired"}:
            hint = " Your credentials expired: log in again (e.g. `aws sso login`)."
        raise AwsError(f"{doing}: {code}: {msg}.{hint}") from None


def error_code(exc: BaseException) -> str:
    """The AWS error code of a botocore ClientError (e.g. "InvalidAMIID.NotFound"), else ""."""
    response = getattr(exc, "response", None)
    return str(response.get("Error", {}).get("Code", "")) if isinstance(response, dict) else ""


def error_message(exc: BaseException) -> str:
    """The AWS error message of a botocore ClientError, else ""."""
    response = getattr(exc, "response", None)
    return str(response.get("Error", {}).get("Message", "")) if isinstance(response, dict) else ""
