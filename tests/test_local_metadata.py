"""The local IMDSv2 endpoint: a token first, every read with it, IMDSv1 refused; the
agent's client reads the instance's identity from it."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest


def test_imdsv2_only_and_the_agent_reads_its_identity():
    from factory.local.instance.metadata import MetadataService
    from factory_grow.imds import Identity, Imds

    with MetadataService.start("i-0123456789abcdef0", "eu-west-2b", "m6i.xlarge") as imds:
        with pytest.raises(urllib.error.HTTPError) as err:  # IMDSv1: no token, no answer
            urllib.request.urlopen(f"{imds.endpoint}/latest/meta-data/instance-id", timeout=2)
        assert err.value.code == 401
        assert Imds(imds.endpoint).identity() == Identity("i-0123456789abcdef0", "eu-west-2b", "eu-west-2", "m6i.xlarge")


def test_the_agent_gives_up_on_a_silent_metadata_service():
    from factory.local.procs import free_port
    from factory_grow.imds import Imds, MetadataError

    with pytest.raises(MetadataError, match="did not answer"):
        Imds(f"http://127.0.0.1:{free_port()}", timeout=0.2).identity(attempts=2, wait=0.05)


def test_the_sdk_finds_the_instance_roles_credentials_at_the_local_imds(monkeypatch, tmp_path):
    """As on EC2: botocore's credential chain ends at IMDS (token first), here pointed at the
    local endpoint; without a role there are none to find."""
    import botocore.session

    from factory.local.instance.metadata import MetadataService

    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_EC2_METADATA_DISABLED"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    with MetadataService.start("i-0123456789abcdef0", "us-east-1a", "c6i.large", role="ecsInstanceRole") as imds:
        monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.endpoint)
        creds = botocore.session.Session().get_credentials()
        assert creds is not None and creds.method == "iam-role" and creds.token
    with MetadataService.start("i-0123456789abcdef0", "us-east-1a", "c6i.large") as imds:
        monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.endpoint)
        assert botocore.session.Session().get_credentials() is None
