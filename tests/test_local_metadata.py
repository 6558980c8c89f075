"""The local IMDSv2 endpoint: a token first, every read with it, IMDSv1 refused; the
agent's client reads the instance's identity from it."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest


def test_imdsv2_only_and_the_agent_reads_its_identity():
    from factory.local.metadata import MetadataService
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
