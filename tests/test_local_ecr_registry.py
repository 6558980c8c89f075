"""The local cloud's ECR registry double (factory/local/aws/ecr_registry.py) against the
Registry HTTP API v2 and ECR's documented behaviour, with a verifying TLS client and no
Docker: what tests/test_bake_check_ecr.py then relies on through a real dockerd."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import socket
import ssl

import pytest

from tests.buildhost_fixtures import tar_of

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the ECR registry double listens on port 443 (root)")


@pytest.fixture(scope="module")
def registry(moto, tmp_path_factory):
    from factory.local.aws.ecr_registry import EcrRegistry

    base = tmp_path_factory.mktemp("ecr")
    layer = tar_of({"etc/os-release": b"ID=factory-test\n"})
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer).hexdigest()]}}).encode()
    archive = base / "image.tar"
    archive.write_bytes(tar_of({"abc/layer.tar": layer, "cfg.json": config,
                              "manifest.json": json.dumps([{"Config": "cfg.json", "RepoTags": ["x:1"], "Layers": ["abc/layer.tar"]}]).encode()}))
    reg = EcrRegistry.start(base / "state", endpoint=moto.endpoint, region="eu-west-2")
    reg.add_archive("team/tool", "1", archive)
    reg.add_foreign_index("team/tool", "other-arch", archive)
    state = reg.state_dir
    yield reg, layer, config
    reg.stop()
    assert not state.exists()
    with pytest.raises(OSError):
        socket.create_connection((reg.address, 443), timeout=2).close()


def get(reg, path, password=None, method="GET", user="AWS"):
    context = ssl.create_default_context(cafile=str(reg.ca_file))  # verifies the chain and the name
    conn = http.client.HTTPSConnection(reg.address, 443, context=context)
    conn.sock = context.wrap_socket(socket.create_connection((reg.address, 443)), server_hostname=reg.host)
    headers = {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()} if password else {}
    conn.request(method, path, headers=headers)
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, resp.headers, body


def test_the_registry_is_ecrs_name_with_the_password_ecr_gives(registry, moto):
    import boto3

    reg, _, _ = registry
    ecr = boto3.client("ecr", region_name="eu-west-2", endpoint_url=moto.endpoint,
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    data = ecr.get_authorization_token()["authorizationData"][0]
    assert data["proxyEndpoint"] == f"https://{reg.host}" and reg.host.endswith(".dkr.ecr.eu-west-2.amazonaws.com")
    user, _, password = base64.b64decode(data["authorizationToken"]).decode().partition(":")
    assert get(reg, "/v2/", password, user=user)[0] == 200
    assert reg.address.startswith("127.") and not reg.address.startswith("127.0.")
    assert (reg.state_dir / "registry.key").stat().st_mode & 0o077 == 0


@pytest.mark.parametrize("user,password", [(None, None), ("AWS", "wrong"), ("someone", "PASSWORD")])
def test_without_ecrs_password_every_path_is_401_with_a_basic_challenge(registry, user, password):
    reg, _, _ = registry
    password = reg.accepted_password if password == "PASSWORD" else password
    for path in ("/v2/", "/v2/team/tool/manifests/1", "/v2/nothing/here/manifests/1"):
        status, headers, body = get(reg, path, password, user=user or "AWS")
        assert status == 401, path
        assert headers["WWW-Authenticate"] == f'Basic realm="https://{reg.host}/",service="ecr.amazonaws.com"'
        assert json.loads(body)["errors"][0]["code"] == "UNAUTHORIZED"


def test_manifests_and_blobs_by_digest_with_head_and_get(registry):
    reg, layer, config = registry
    pw = reg.accepted_password
    status, headers, body = get(reg, "/v2/team/tool/manifests/1", pw)
    assert status == 200 and headers["Content-Type"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert headers["Docker-Content-Digest"] == "sha256:" + hashlib.sha256(body).hexdigest()
    manifest = json.loads(body)
    assert manifest["schemaVersion"] == 2 and manifest["config"]["digest"] == "sha256:" + hashlib.sha256(config).hexdigest()
    head = get(reg, "/v2/team/tool/manifests/1", pw, method="HEAD")
    assert head[0] == 200 and head[2] == b"" and head[1]["Docker-Content-Digest"] == headers["Docker-Content-Digest"]
    assert int(head[1]["Content-Length"]) == len(body)
    assert get(reg, f"/v2/team/tool/manifests/{headers['Docker-Content-Digest']}", pw)[2] == body
    assert get(reg, f"/v2/team/tool/blobs/{manifest['config']['digest']}", pw)[2] == config
    for entry in manifest["layers"]:
        status, headers, blob = get(reg, f"/v2/team/tool/blobs/{entry['digest']}", pw)
        assert status == 200 and len(blob) == entry["size"] and headers["Docker-Content-Digest"] == entry["digest"]
        assert "sha256:" + hashlib.sha256(blob).hexdigest() == entry["digest"]
        import gzip

        assert gzip.decompress(blob) == layer  # the diff id the config names


def test_the_foreign_index_names_only_another_architecture(registry):
    reg, _, _ = registry
    status, headers, body = get(reg, "/v2/team/tool/manifests/other-arch", reg.accepted_password)
    assert status == 200 and headers["Content-Type"] == "application/vnd.docker.distribution.manifest.list.v2+json"
    listing = json.loads(body)
    assert [m["platform"] for m in listing["manifests"]] == [{"architecture": "s390x", "os": "linux"}]
    image = get(reg, f"/v2/team/tool/manifests/{listing['manifests'][0]['digest']}", reg.accepted_password)
    config = json.loads(get(reg, f"/v2/team/tool/blobs/{json.loads(image[2])['config']['digest']}", reg.accepted_password)[2])
    assert config["architecture"] == "s390x"


def test_what_the_registry_lacks_is_404_with_the_registry_error(registry):
    reg, _, _ = registry
    pw = reg.accepted_password
    cases = {"/v2/team/tool/manifests/2": "MANIFEST_UNKNOWN", "/v2/team/absent/manifests/1": "NAME_UNKNOWN",
             "/v2/team/tool/blobs/sha256:" + "0" * 64: "BLOB_UNKNOWN"}
    for path, code in cases.items():
        status, _, body = get(reg, path, pw)
        assert (status, json.loads(body)["errors"][0]["code"]) == (404, code), path
    assert "team/absent" in json.loads(get(reg, "/v2/team/absent/manifests/1", pw)[2])["errors"][0]["message"]
    assert get(reg, "/v2/team/tool/manifests/1", pw, method="DELETE")[0] == 405
