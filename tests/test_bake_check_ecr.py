"""Issue 22 §10, the success path: the bake check pulls a task image from ECR through the
local cloud's ECR registry double (factory/local/aws/ecr_registry.py), reached by its real
host name on port 443 from the build host's dockerd. The builder's AWS CLI gets its
credentials from the instance profile (the local metadata double) and its password from
the local cloud's ECR API; Docker logs in, pulls, the C library check runs, Docker logs
out. A refused password, a missing tag or repository and a tag without this machine's
architecture are each told apart from the C library check.

One build host, one registry, one metadata service for the module; the bake_check role
run with ansible-playbook as tests/test_roles.py does (no Packer)."""

from __future__ import annotations

import json

import pytest
from buildhost_fixtures import requires_buildhost, role_playbook, run_playbook, show, start_host
from test_roles import GLIBC_IMAGE_SCRIPT, PREFIX, installer_vars

pytestmark = [pytest.mark.slow, requires_buildhost]

REGION = "us-east-1"
BUILDER_ROLE = "factory-builder"  # the builder's instance profile's role, as the metadata double serves it


@pytest.fixture(scope="module")
def ecr(tmp_path_factory, moto):
    """A build host with the AWS CLI in the prefix and an instance profile, and the ECR
    registry double serving a glibc task image as tools/glibc:1 (and, with no variant for
    this machine, :s390x-only). The builder's engine does not have the image."""
    from factory.local.aws.ecr_registry import EcrRegistry
    from factory.local.builder.mirror import Mirror
    from factory.local.instance.metadata import MetadataService

    base = tmp_path_factory.mktemp("ecr")
    mirror = Mirror.start(base / "mirror")
    host = start_host(base / "host")
    registry = imds = None
    try:
        installed = run_playbook(host, role_playbook(base, "miniconda_awscli"), {
            "factory_become": False, "ansible_python_interpreter": host.python_interpreter, **installer_vars(mirror)}, base)
        assert installed.returncode == 0, show(installed)
        host.run("sh", "-c", GLIBC_IMAGE_SCRIPT)
        host.run("docker", "save", "-o", "/root/glibc-task.tar", "factory-test-glibc-task:1")
        registry = EcrRegistry.start(base / "ecr-registry", endpoint=moto.endpoint, region=REGION)
        archive = host.path("/root/glibc-task.tar")
        registry.add_archive("tools/glibc", "1", archive)
        registry.add_foreign_index("tools/glibc", "s390x-only", archive)
        host.run("sh", "-c", "rm /root/glibc-task.tar && docker rmi factory-test-glibc-task:1 >/dev/null")
        registry.reach_from(host)
        # The builder's instance profile: IMDSv2 serving its role's credentials. On AWS the
        # CLI finds IMDS and ECR's API by themselves; here its config names the doubles.
        imds = MetadataService.start("i-0b11de4000000ec42", f"{REGION}a", "c6i.large", role=BUILDER_ROLE)
        host.use_instance_profile(imds.endpoint, moto.endpoint)
        yield host, registry, moto, base
    finally:
        if imds is not None:
            imds.stop()
        if registry is not None:
            registry.stop()
        host.stop(remove=True)
        mirror.stop()


def bake_check(ecr, tmp_path, images):
    host, _, _, _ = ecr
    report = tmp_path / "report.json"
    play = run_playbook(host, role_playbook(tmp_path, "bake_check"), {
        "bake_check_prefix": PREFIX, "bake_check_min_gib": 1, "bake_check_report_dest": str(report),
        "bake_check_task_images": images, "ansible_python_interpreter": host.python_interpreter}, tmp_path)
    got = {t["image"]: t for t in json.loads(report.read_text())["task_images"]} if report.exists() else {}
    return play, got


def docker_logins(host) -> list[str]:
    """The registries Docker on the builder holds a login for (its client config's `auths`;
    their names only, so that no failure message shows a credential)."""
    text = host.run("sh", "-c", "cat /root/.docker/config.json 2>/dev/null", check=False).stdout
    return sorted(json.loads(text).get("auths", {})) if text.strip() else []


def test_an_ecr_task_image_is_pulled_with_the_instance_profile_checked_and_logged_out(ecr, tmp_path):
    host, registry, moto, _ = ecr
    image = registry.image("tools/glibc", "1")
    # The builder reaches the registry by its ECR name, and its certificate verifies against the CA.
    probe = host.run("python3", "-c", "import ssl, sys, urllib.error, urllib.request\n"
                     "ctx = ssl.create_default_context(cafile=sys.argv[1])\n"
                     "try: urllib.request.urlopen(sys.argv[2], context=ctx)\n"
                     "except urllib.error.HTTPError as e: print(e.code, e.headers['WWW-Authenticate'])",
                     f"/etc/docker/certs.d/{registry.host}/ca.crt", f"https://{registry.host}/v2/")
    assert probe.stdout.startswith("401 Basic realm="), probe.stdout + probe.stderr
    moto.calls(clear=True)
    registry.requests.clear()

    play, got = bake_check(ecr, tmp_path, [image])

    assert play.returncode == 0, show(play)
    assert got[image]["pulled"] and got[image]["aws_ok"] and got[image]["said"].startswith("aws-cli/"), got
    # Docker was refused first (no credentials), then logged in and pulled with ECR's password
    assert registry.requests[0][:3] == ("GET", "/v2/", False), registry.requests
    pulled = {path for _, path, authorized, action in registry.requests if authorized and action}
    assert any("/manifests/1" in p for p in pulled) and any("/blobs/sha256:" in p for p in pulled), registry.requests
    # the builder's CLI asked ECR for the password with the instance profile's credentials
    builder_calls = {action for who, action in moto.calls_by() if who == "builder"}
    assert "ecr:GetAuthorizationToken" in builder_calls, moto.calls_by()
    # what the builder called and pulled is exactly its instance role's policy
    from factory import iam

    pulled_with = {action for *_, action in registry.requests if action}
    assert pulled_with == set(iam.AT_THE_REGISTRY), registry.requests
    needed = builder_calls | pulled_with
    allowed = {a for s in iam.builder_instance_policy()["Statement"] for a in s["Action"]}
    assert needed == allowed, (needed, allowed)
    # logged out: Docker keeps no ECR credential; and the pulled image is gone again
    assert not [name for name in docker_logins(host) if "amazonaws" in name], docker_logins(host)
    assert host.run("docker", "images", "-q", f"{registry.host}/tools/glibc").stdout.strip() == ""


def test_a_refused_ecr_password_is_a_credentials_problem(ecr, tmp_path):
    host, registry, _, _ = ecr
    image = registry.image("tools/glibc", "1")
    accepted, registry.accepted_password = registry.accepted_password, "a-password-ecr-never-gave"
    try:
        play, got = bake_check(ecr, tmp_path, [image])
    finally:
        registry.accepted_password = accepted
    assert play.returncode != 0
    assert (got[image]["pulled"], got[image]["pull_problem"]) == (False, "credentials"), got
    assert "ECR login" in got[image]["said"], got
    text = " ".join(play.stdout.split())
    assert f"The task image {image} cannot run on the builder: not pulled (credentials)" in text, show(play)
    assert "does not run in the task image" not in text, show(play)
    assert not any(authorized for _, _, authorized, _ in registry.requests[-3:]), registry.requests
    assert registry.host not in docker_logins(host)


@pytest.fixture(scope="module")
def unpullable(ecr, tmp_path_factory):
    """One bake check over images the registry cannot give this machine (logged in fine)."""
    _, registry, _, _ = ecr
    images = {"tag": registry.image("tools/glibc", "no-such-tag"), "repository": registry.image("tools/absent", "1"),
              "architecture": registry.image("tools/glibc", "s390x-only")}
    registry.requests.clear()
    play, got = bake_check(ecr, tmp_path_factory.mktemp("unpullable"), list(images.values()))
    return play, got, images, list(registry.requests)


def test_a_missing_ecr_tag_or_repository_is_not_found(ecr, unpullable):
    host, registry, _, _ = ecr
    play, got, images, requests = unpullable
    assert play.returncode != 0
    for kind in ("tag", "repository"):
        assert (got[images[kind]]["pulled"], got[images[kind]]["pull_problem"]) == (False, "not_found"), got
    assert "manifest unknown" in got[images["tag"]]["said"], got
    assert "name unknown" in got[images["repository"]]["said"], got
    assert ("GET", "/v2/", True, "") in requests, requests  # the login was accepted
    assert "does not run in the task image" not in " ".join(play.stdout.split()), show(play)
    assert registry.host not in docker_logins(host)


def test_an_ecr_tag_without_this_architecture_is_an_architecture_problem(ecr, unpullable):
    play, got, images, _ = unpullable
    image = images["architecture"]
    assert (got[image]["pulled"], got[image]["pull_problem"]) == (False, "architecture"), got
    assert "no matching manifest" in got[image]["said"], got
    assert "the image has no variant for the builder's platform" in " ".join(play.stdout.split()), show(play)
