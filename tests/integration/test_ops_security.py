"""The agent's ops endpoint: loopback by default, TLS verified against the operator's CA,
and no call reaches a container that is not this deployment's."""

from __future__ import annotations

import datetime as dt
import ipaddress
import secrets
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from conftest import free_port
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from capsuled.config import AgentSettings
from capsuled.domain import labels as L
from capsuled.drivers.runtime.docker import DockerRuntime
from capsuled.errors import NotFound, Unavailable
from capsuled.hostops.client import RemoteOps
from capsuled.hostops.server import create_ops_app, owned_by, serve_ops, stop_ops

pytestmark = [pytest.mark.docker]
TEST_LABEL = "capsuled.test=ops-security"


def _pem(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def make_pki(tmp: Path) -> tuple[str, str, str]:
    """A CA and a certificate it signed for 127.0.0.1: (ca file, cert file, key file)."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "capsuled test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "agent")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    return (_pem(tmp / "ca.pem", ca.public_bytes(pem)), _pem(tmp / "agent.pem", cert.public_bytes(pem)),
            _pem(tmp / "agent.key", key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption())))


def _remove_labelled(api: docker.APIClient) -> None:
    for c in api.containers(all=True, filters={"label": [TEST_LABEL]}):
        api.remove_container(c["Id"], force=True)


def _sleeper(api: docker.APIClient, labels: dict[str, str]) -> str:
    cid = api.create_container("busybox", command=["sleep", "300"], detach=True,
                               labels={"capsuled.test": "ops-security", **labels})["Id"]
    api.start(cid)
    return str(cid)


@pytest.fixture(scope="module")
def tls_agent(docker_api: docker.APIClient, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[tuple[str, str, str, str, str]]:
    """(https url, key, CA file, an owned container, a foreign container)."""
    _remove_labelled(docker_api)
    ca, cert, key_file = make_pki(tmp_path_factory.mktemp("pki"))
    instance = f"ops-sec-{secrets.token_hex(4)}"
    runtime = DockerRuntime(docker_api)
    key = secrets.token_urlsafe(24)
    owned = _sleeper(docker_api, {L.INSTANCE: instance})
    foreign = _sleeper(docker_api, {L.INSTANCE: "another-deployment"})

    # As the composition root wires it.
    owns = owned_by(lambda: (s.id for s in runtime.list_summaries(instance)))

    port = free_port()
    server, thread = serve_ops(create_ops_app(runtime, key, owns), "127.0.0.1", port,
                               ssl_certfile=cert, ssl_keyfile=key_file)
    try:
        yield f"https://127.0.0.1:{port}", key, ca, owned, foreign
    finally:
        stop_ops(server, thread)
        _remove_labelled(docker_api)


@pytest.fixture()
def ops(tls_agent: tuple[str, str, str, str, str]) -> Iterator[RemoteOps]:
    url, key, ca, _, _ = tls_agent
    remote = RemoteOps(url, key, timeout=10, ca_file=ca)
    yield remote
    remote.close()


def test_over_tls_verified_against_the_ca_calls_and_sockets_work(
        ops: RemoteOps, tls_agent: tuple[str, str, str, str, str]) -> None:
    owned = tls_agent[3]
    assert "Processes" in ops.top(owned, None)
    terminal = ops.attach(owned)  # a websocket, over wss
    terminal.close()


def test_an_agent_not_signed_by_the_configured_ca_is_unavailable(
        tls_agent: tuple[str, str, str, str, str]) -> None:
    url, key, _, owned, _ = tls_agent
    unverified = RemoteOps(url, key, timeout=5)  # the system's CAs do not know ours
    try:
        with pytest.raises(Unavailable, match=url):
            unverified.top(owned, None)
        with pytest.raises(Unavailable):
            unverified.attach(owned)
    finally:
        unverified.close()
    plain = RemoteOps(url.replace("https", "http"), key, timeout=5)
    try:
        with pytest.raises(Unavailable):
            plain.top(owned, None)
    finally:
        plain.close()


def test_containers_of_other_deployments_or_none_are_not_found(
        ops: RemoteOps, tls_agent: tuple[str, str, str, str, str],
        docker_api: docker.APIClient) -> None:
    _, _, _, owned, foreign = tls_agent
    name = docker_api.inspect_container(owned)["Name"].lstrip("/")
    for target in (foreign, foreign[:12], name, owned[:12]):  # ids, prefixes and names
        with pytest.raises(NotFound, match="No such container"):
            ops.kill(target, "SIGKILL")
        with pytest.raises(NotFound, match="No such container"):
            ops.exec_interactive(target, ["sh"])
        with pytest.raises(NotFound, match="No such container"):
            ops.attach(target)
        with pytest.raises(NotFound, match="No such container"):
            ops.follow_logs(target, True, True, False, None, None)
    # Docker was never asked: both still run.
    assert docker_api.inspect_container(foreign)["State"]["Running"]
    assert docker_api.inspect_container(owned)["State"]["Running"]
    ops.pause(owned)  # its own container: fine
    assert docker_api.inspect_container(owned)["State"]["Paused"]
    ops.unpause(owned)


def test_the_ops_endpoint_listens_on_loopback_unless_told() -> None:
    assert AgentSettings().ops_bind() == ("127.0.0.1", 9518)
    assert AgentSettings(ops_url="https://10.1.2.3:9600").ops_bind() == ("10.1.2.3", 9600)
    assert AgentSettings(ops_listen="0.0.0.0:9518", host_name="h7").ops_endpoint_url() == \
        "http://h7:9518"
    with pytest.raises(ValueError, match="go together"):
        AgentSettings(ops_cert_file=Path("/c.pem"))


def test_an_id_found_ours_is_remembered_and_others_are_asked_each_time() -> None:
    listed: list[int] = []

    def listing() -> list[str]:
        listed.append(1)
        return ["a" * 64]

    owns = owned_by(listing, remember=1)
    assert owns("a" * 64) and owns("a" * 64) and len(listed) == 1
    assert not owns("b" * 64) and not owns("b" * 64) and len(listed) == 3
    assert not owns("a" * 12)  # a prefix is not the id
