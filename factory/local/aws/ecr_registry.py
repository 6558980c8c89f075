"""ECR's registry endpoint on the local cloud: `<account>.dkr.ecr.<region>.amazonaws.com`, pull only.

On AWS a builder pulls a private task image from its account's ECR registry: it asks ECR's
API for a password (`ecr:GetAuthorizationToken`, with its instance profile), logs Docker in
as `AWS` with it, and Docker speaks the Registry HTTP API v2 over TLS on port 443 to the
registry host. No registry can run offline here, and ECR's names carry no port, so this
double stands in for that endpoint (docs/local-cloud.md, "ECR's registry endpoint"):

- it listens on port 443 of a loopback address of its own (`127.a.b.c`: all of 127/8 is
  loopback on Linux), with a certificate for the registry's real host name signed by a
  CA made for it; `reach_from(host)` maps the host name to that address in a build host's
  `/etc/hosts` and puts the CA where Docker looks for a registry's CA
  (`/etc/docker/certs.d/<host>/ca.crt`). Docker itself does not verify it: it takes a
  registry whose name resolves into 127.0.0.0/8 as insecure (TLS unverified); a client
  that verifies (Python's `ssl` in the tests) proves the name and the chain;
- the password it accepts is the one the local cloud's ECR API gives
  (GetAuthorizationToken, asked once at start, kept in memory only), with the user `AWS`,
  as HTTP basic authentication; anything else gets 401 and ECR's basic challenge;
- it serves images exported from a Docker engine (`docker save`): a schema2 manifest per
  tag, the config and the (gzipped) layers as blobs by digest, GET and HEAD, with
  `Docker-Content-Digest`; a manifest list naming only another architecture
  (`add_foreign_index`); 404 with the registry's error JSON for a repository
  (NAME_UNKNOWN), tag (MANIFEST_UNKNOWN) or blob (BLOB_UNKNOWN) it lacks.

Each request is noted with the IAM action ECR would authorize it with (`requests`):
manifests `ecr:BatchGetImage`, layers and config `ecr:GetDownloadUrlForLayer`.

    registry = EcrRegistry.start(state_dir, endpoint=moto.endpoint, region="us-east-1")
    registry.add_archive("tools/glibc", "1", Path("image.tar"))   # a `docker save` archive
    registry.reach_from(build_host)
    registry.image("tools/glibc", "1")   # 123456789012.dkr.ecr.us-east-1.amazonaws.com/tools/glibc:1
    registry.stop()                      # no thread, socket or file left
"""

from __future__ import annotations

import base64
import errno
import gzip
import hashlib
import json
import random
import re
import shutil
import ssl
import tarfile
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from factory.errors import LocalCloudError

MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
CONFIG = "application/vnd.docker.container.image.v1+json"
LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
USER = "AWS"  # ECR's docker login user name (Amazon ECR User Guide, "Private registry authentication")
PORT = 443  # ECR's registry names carry no port: Docker speaks HTTPS to 443

_ROUTE = re.compile(r"^/v2/(?P<name>[a-z0-9]+(?:[._/-][a-z0-9]+)*)/(?P<kind>manifests|blobs)/(?P<ref>[A-Za-z0-9_.:-]+)$")


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class _Repository:
    tags: dict[str, str] = field(default_factory=dict)  # tag -> manifest digest
    manifests: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # digest -> (media type, bytes)
    blobs: dict[str, bytes] = field(default_factory=dict)  # digest -> bytes


@dataclass
class EcrRegistry:
    """A running registry double: where it listens, which host name it answers for."""

    state_dir: Path  # its certificate and key; removed by stop()
    host: str  # <account>.dkr.ecr.<region>.amazonaws.com, from GetAuthorizationToken's proxyEndpoint
    address: str  # the loopback address it listens on, port 443
    # The only password let in (user AWS). A test may set another to see a refused login.
    accepted_password: str = field(repr=False, default="")
    # Every request: (method, path, authorized, IAM action ECR would authorize it with or "").
    requests: list[tuple[str, str, bool, str]] = field(default_factory=list)
    _repos: dict[str, _Repository] = field(default_factory=dict, repr=False)
    _server: Any = field(default=None, repr=False)
    _lock: Any = field(default_factory=threading.Lock, repr=False)

    @property
    def ca_file(self) -> Path:
        return self.state_dir / "ca.crt"

    @property
    def account(self) -> str:
        return self.host.split(".", 1)[0]

    def image(self, repository: str, tag: str) -> str:
        return f"{self.host}/{repository}:{tag}"

    # -- life cycle ------------------------------------------------------------------

    @classmethod
    def start(cls, state_dir: Path, *, endpoint: str, region: str, address: str | None = None) -> EcrRegistry:
        """Ask the local cloud's ECR API for the registry and its password, make the
        certificate, and listen on 443 of `address` (else a free loopback address)."""
        host, password = _authorization(endpoint, region)
        state_dir = Path(state_dir).absolute()
        state_dir.mkdir(parents=True, exist_ok=True)
        state_dir.chmod(0o700)
        registry = cls(state_dir=state_dir, host=host, address="", accepted_password=password)
        server = None
        for candidate in [address] if address else _loopback_candidates():
            try:
                server = _TlsServer((candidate, PORT), _handler(registry))
                registry.address = candidate
                break
            except OSError as exc:
                if address or exc.errno != errno.EADDRINUSE:
                    raise LocalCloudError(f"the local ECR registry cannot listen on {candidate}:{PORT}: {exc}") from exc
        if server is None:
            raise LocalCloudError(f"the local ECR registry found no free loopback address for port {PORT}")
        try:
            server.context = _tls_context(state_dir, host, registry.address)
        except BaseException:
            server.server_close()
            shutil.rmtree(state_dir, ignore_errors=True)
            raise
        registry._server = server
        threading.Thread(target=server.serve_forever, name=f"ecr-registry-{registry.address}", daemon=True).start()
        return registry

    def stop(self) -> None:
        """Stop listening and remove the state folder (certificate and key)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        shutil.rmtree(self.state_dir, ignore_errors=True)

    def reach_from(self, host: Any) -> None:
        """Make a build host (factory.local.builder.buildhost) reach this registry by its
        ECR name: the name at this address in its /etc/hosts, the CA in Docker's certs.d."""
        host.trust_registry(self.host, self.address, self.ca_file.read_text())

    # -- content ---------------------------------------------------------------------

    def add_archive(self, repository: str, tag: str, archive: Path) -> str:
        """Serve the (first) image of a `docker save` archive as repository:tag; its manifest's digest."""
        config, layers = _read_archive(archive)
        return self._add_image(repository, tag, config, layers)

    def add_foreign_index(self, repository: str, tag: str, archive: Path, architecture: str = "s390x") -> str:
        """Serve repository:tag as a manifest list whose only image is the archive's, said
        to be built for linux/`architecture` (a tag with no variant for this machine)."""
        config, layers = _read_archive(archive)
        changed = json.loads(config)
        changed["architecture"] = architecture
        foreign = json.dumps(changed, separators=(",", ":")).encode()
        digest = self._add_image(repository, f"{tag}-{architecture}", foreign, layers)
        size = len(self._repos[repository].manifests[digest][1])
        listing = json.dumps({"schemaVersion": 2, "mediaType": MANIFEST_LIST, "manifests": [
            {"mediaType": MANIFEST, "size": size, "digest": digest, "platform": {"architecture": architecture, "os": "linux"}}]},
            indent=3).encode()
        return self._put_manifest(repository, tag, MANIFEST_LIST, listing)

    def _add_image(self, repository: str, tag: str, config: bytes, layers: list[bytes]) -> str:
        zipped = [gzip.compress(layer, mtime=0) for layer in layers]
        repo = self._repos.setdefault(repository, _Repository())
        for blob in [config, *zipped]:
            repo.blobs[_digest(blob)] = blob
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": MANIFEST,
            "config": {"mediaType": CONFIG, "size": len(config), "digest": _digest(config)},
            "layers": [{"mediaType": LAYER, "size": len(z), "digest": _digest(z)} for z in zipped],
        }, indent=3).encode()
        return self._put_manifest(repository, tag, MANIFEST, manifest)

    def _put_manifest(self, repository: str, tag: str, media_type: str, data: bytes) -> str:
        repo = self._repos.setdefault(repository, _Repository())
        digest = _digest(data)
        repo.manifests[digest] = (media_type, data)
        repo.tags[tag] = digest
        return digest

    # -- answering -------------------------------------------------------------------

    def _authorized(self, header: str | None) -> bool:
        if not header or not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        return user == USER and bool(password) and password == self.accepted_password

    def _answer(self, path: str, authorized: bool) -> tuple[int, dict[str, str], bytes, str]:
        """(status, headers, body, IAM action) for a GET of `path`."""
        if not authorized:
            return 401, {"WWW-Authenticate": f'Basic realm="https://{self.host}/",service="ecr.amazonaws.com"'}, \
                _errors("UNAUTHORIZED", "Not Authorized"), ""
        if path == "/v2/":
            return 200, {}, b"{}", ""
        m = _ROUTE.match(path)
        if not m:
            return 404, {}, _errors("NOT_FOUND", "404 page not found"), ""
        name, kind, ref = m["name"], m["kind"], m["ref"]
        repo = self._repos.get(name)
        action = "ecr:BatchGetImage" if kind == "manifests" else "ecr:GetDownloadUrlForLayer"
        if repo is None:
            return 404, {}, _errors("NAME_UNKNOWN", f"The repository with name '{name}' does not exist in the registry "
                                                    f"with id '{self.account}'"), action
        if kind == "manifests":
            digest = repo.tags.get(ref, ref)
            if digest not in repo.manifests:
                return 404, {}, _errors("MANIFEST_UNKNOWN", "Requested image not found"), action
            media_type, data = repo.manifests[digest]
            return 200, {"Content-Type": media_type, "Docker-Content-Digest": digest}, data, action
        if ref not in repo.blobs:
            return 404, {}, _errors("BLOB_UNKNOWN", "blob unknown to registry"), action
        return 200, {"Content-Type": "application/octet-stream", "Docker-Content-Digest": ref}, repo.blobs[ref], action


def _errors(code: str, message: str) -> bytes:
    return json.dumps({"errors": [{"code": code, "message": message, "detail": None}]}).encode()


def _handler(registry: EcrRegistry) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _respond(self, with_body: bool) -> None:
            authorized = registry._authorized(self.headers.get("Authorization"))
            status, headers, body, action = registry._answer(self.path.split("?", 1)[0], authorized)
            with registry._lock:
                registry.requests.append((self.command, self.path, authorized, action if status == 200 else ""))
            self.send_response(status)
            headers = {"Content-Type": "application/json; charset=utf-8", **headers,
                       "Docker-Distribution-API-Version": "registry/2.0", "Content-Length": str(len(body))}
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            if with_body:
                self.wfile.write(body)

        def do_GET(self) -> None:
            self._respond(True)

        def do_HEAD(self) -> None:
            self._respond(False)

        def _pull_only(self) -> None:
            body = _errors("UNSUPPORTED", "the local ECR registry serves pulls only")
            self.send_response(405)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_PUT = do_POST = do_PATCH = do_DELETE = _pull_only

        def log_message(self, *args: Any) -> None:  # quiet: `requests` keeps what was asked
            pass

    return Handler


class _TlsServer(ThreadingHTTPServer):
    """HTTPS, the handshake in each request's own thread (a slow client holds up no other)."""

    daemon_threads = True
    context: ssl.SSLContext

    def finish_request(self, request: Any, client_address: Any) -> None:
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return  # a client that does not trust the CA, or hung up: nothing to answer
        self.RequestHandlerClass(tls, client_address, self)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hangs up mid-answer (Docker does after a HEAD) is not an error here


def _loopback_candidates(tries: int = 32) -> list[str]:
    """Loopback addresses away from 127.0.0.0/16 (127.0.0.1, Debian's 127.0.1.1), one per try."""
    rng = random.SystemRandom()
    return [f"127.{rng.randint(16, 254)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}" for _ in range(tries)]


def _authorization(endpoint: str, region: str) -> tuple[str, str]:
    """The registry's host name and the password, as the local cloud's ECR API gives them."""
    from factory.aws import Clients, aws_errors
    from factory.local.aws.moto_server import LOCAL_ACCESS_KEY, LOCAL_SECRET_KEY

    clients = Clients(region=region, endpoint_url=endpoint, agent="factory-local",
                      credentials={"AccessKeyId": LOCAL_ACCESS_KEY, "SecretAccessKey": LOCAL_SECRET_KEY, "SessionToken": None})
    with aws_errors("asking the local cloud's ECR for the registry's password"):
        data = clients.client("ecr").get_authorization_token()["authorizationData"][0]
    user, _, password = base64.b64decode(data["authorizationToken"]).decode().partition(":")
    if user != USER or not password:
        raise LocalCloudError(f"the local cloud's ECR gave a token for user {user!r}, not {USER!r}")
    return data["proxyEndpoint"].removeprefix("https://").rstrip("/"), password


def _read_archive(archive: Path) -> tuple[bytes, list[bytes]]:
    """The config and the layer tars of the first image in a `docker save` archive."""
    with tarfile.open(archive) as tar:
        def member(name: str) -> bytes:
            f = tar.extractfile(name)
            if f is None:
                raise LocalCloudError(f"{archive}: {name} is not a file in the archive")
            return f.read()

        entry = json.loads(member("manifest.json"))[0]
        return member(entry["Config"]), [member(layer) for layer in entry["Layers"]]


def _tls_context(state_dir: Path, host: str, address: str) -> ssl.SSLContext:
    """A CA made for this registry (its key never written), and the registry's certificate
    for `host` and `address` signed by it; the CA certificate left in `state_dir/ca.crt`."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"factory local ECR CA ({address})")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host), x509.IPAddress(ipaddress.ip_address(address))]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    self_ca = ca.public_bytes(pem)
    (state_dir / "ca.crt").write_bytes(self_ca)
    chain = state_dir / "registry.crt"
    chain.write_bytes(cert.public_bytes(pem))
    key_file = state_dir / "registry.key"
    key_file.touch(mode=0o600)
    key_file.write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(chain, key_file)
    return context
