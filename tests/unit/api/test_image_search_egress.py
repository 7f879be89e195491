"""Image search is no server-side request forgery: a member's registry (and the token
realm it names) at loopback, link-local or private addresses is refused before any
connection; the operator may open private networks; admins' registries reach anywhere.
SQLite store, a fake resolver, and httpx.MockTransport standing in for the network."""

from __future__ import annotations

from collections.abc import Iterator
from ipaddress import ip_address
from datetime import timedelta
from pathlib import Path

import json

import httpx
import pytest

from capsuled.api.policy import Policy
from capsuled.api.relay.egress import HttpGetter, Unresolvable
from capsuled.api.services.image_search import MAX_CATALOG_BYTES
from capsuled.api.services.images import ImageService
from capsuled.api.services.registries import RegistryService
from capsuled.domain.egress import IPAddress
from capsuled.errors import InvalidInput
from capsuled.hostops.protocol import ContainerOps
from capsuled.identity.base import Principal
from capsuled.store.crypto import SecretBox
from capsuled.store.engine import Store, make_engine, upgrade

BOX = SecretBox("unit-test-key")
MEMBER = Principal("p1", "alice", frozenset({"member"}))
ADMIN = Principal("p1", "root", frozenset({"admin"}))
DNS = {"registry.example.com": ["93.184.215.14"], "metadata.example.com": ["169.254.169.254"],
       "inside.example.com": ["10.0.0.5"], "auth.example.com": ["93.184.215.15"]}
CATALOG = {"repositories": ["team/busybox", "team/other"]}


class Chunks(httpx.SyncByteStream):
    """A body as a network stream (the relay reads it raw; httpx reads `content=` eagerly)."""

    def __init__(self, body: bytes) -> None:
        self._body = body

    def __iter__(self) -> Iterator[bytes]:
        yield self._body


def answer(status: int, body: object, **headers: str) -> httpx.Response:
    return httpx.Response(status, headers=headers, stream=Chunks(json.dumps(body).encode()))


def resolve(host: str, port: int) -> list[IPAddress]:
    if host not in DNS:
        raise Unresolvable(f"cannot resolve {host}: unknown name")
    return [ip_address(a) for a in DNS[host]]


class Network:
    """Every request that reached the "network", answered like a registry (optionally
    asking for a bearer token from `realm` first)."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.realm: str | None = None

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.path == "/token":
            return answer(200, {"token": "t0k"})
        if self.realm and request.headers.get("authorization") != "Bearer t0k":
            return answer(401, {}, **{"WWW-Authenticate":
                                      f'Bearer realm="{self.realm}",service="r"'})
        return answer(200, CATALOG)

    @property
    def hosts(self) -> list[str]:
        return [str(r.url.host) for r in self.requests]


@pytest.fixture
def store(tmp_path: Path) -> Store:
    engine = make_engine(f"sqlite:///{tmp_path / 's.db'}")
    upgrade(engine)
    return Store(engine)


@pytest.fixture
def network() -> Network:
    return Network()


@pytest.fixture
def getter(network: Network) -> Iterator[HttpGetter]:
    g = HttpGetter(2, MAX_CATALOG_BYTES, resolve=resolve, transport=httpx.MockTransport(network))
    yield g
    g.close()


def _no_ops(host: str) -> ContainerOps:
    raise AssertionError("no host is alive: Docker Hub cannot be searched")


def _images(store: Store, getter: HttpGetter, private_networks: bool = False) -> ImageService:
    return ImageService(store, _no_ops, timedelta(seconds=60),
                        secrets=BOX, policy=Policy(), private_networks=private_networks,
                        getter=getter)


def _register(store: Store, who: Principal, domain: str) -> None:
    RegistryService(store, BOX, Policy()).create(who, {"registry": {"domain": domain}})


def _search(images: ImageService, who: Principal, domain: str) -> list[str]:
    # An IPv6 host is no image reference's: the term then names none (every registry of
    # the project, and Docker Hub, which without a running host answers nothing).
    term = "busybox" if domain.startswith("[") else f"{domain}/busybox"
    return [f["name"] for f in images.search(who, term, None, False)
            if f["metadata"]["registry"] == domain]


@pytest.mark.parametrize("domain", ["127.0.0.1:5000", "metadata.example.com",
                                    "inside.example.com:5000", "[::1]:5000",
                                    "[::ffff:127.0.0.1]"])
def test_a_members_registry_at_an_internal_address_is_refused_unreached(
        store: Store, getter: HttpGetter, network: Network, domain: str) -> None:
    _register(store, MEMBER, domain)
    with pytest.raises(InvalidInput) as refused:
        _search(_images(store, getter), MEMBER, domain)
    message = str(refused.value)
    assert "no registry could be searched" in message and domain in message
    assert "is not allowed" in message
    for internal in ("169.254", "10.0.0.5", "a link-local", "a private", "resolves"):
        assert internal not in message.replace(domain, "")  # names no internal detail
    assert network.requests == []


def test_private_networks_setting_opens_rfc1918_but_never_loopback_or_metadata(
        store: Store, getter: HttpGetter, network: Network) -> None:
    images = _images(store, getter, private_networks=True)
    _register(store, MEMBER, "inside.example.com:5000")
    assert _search(images, MEMBER, "inside.example.com:5000") == [
        "inside.example.com:5000/team/busybox"]
    assert network.hosts == ["10.0.0.5"]  # the checked address itself, no second lookup
    assert network.requests[0].headers["host"] == "inside.example.com:5000"
    for domain in ("127.0.0.1:5000", "metadata.example.com"):
        _register(store, MEMBER, domain)
        with pytest.raises(InvalidInput, match="is not allowed"):
            _search(images, MEMBER, domain)
    assert network.hosts == ["10.0.0.5"]


def test_an_admins_registry_or_an_admins_search_reaches_private_addresses(
        store: Store, getter: HttpGetter, network: Network) -> None:
    images = _images(store, getter)
    _register(store, ADMIN, "inside.example.com:5000")
    # A member of the project searching the registry an admin made there.
    assert _search(images, MEMBER, "inside.example.com:5000") == [
        "inside.example.com:5000/team/busybox"]
    _register(store, MEMBER, "127.0.0.1:5000")
    assert _search(images, ADMIN, "127.0.0.1:5000") == ["127.0.0.1:5000/team/busybox"]
    assert network.hosts == ["10.0.0.5", "127.0.0.1"]


def test_a_member_repointing_an_admins_registry_does_not_inherit_its_reach(
        store: Store, getter: HttpGetter, network: Network) -> None:
    registries = RegistryService(store, BOX, Policy())
    made = registries.create(ADMIN, {"registry": {"name": "reg1",
                                                  "domain": "registry.example.com"}})
    registries.update(MEMBER, made.uuid, {"registry": {"domain": "127.0.0.1:5000"}})
    with pytest.raises(InvalidInput, match="is not allowed"):
        _search(_images(store, getter), MEMBER, "127.0.0.1:5000")
    assert network.requests == []


def test_a_public_registrys_token_realm_on_loopback_is_refused_unreached(
        store: Store, getter: HttpGetter, network: Network) -> None:
    network.realm = "http://127.0.0.1:8080/token"
    _register(store, MEMBER, "registry.example.com")
    with pytest.raises(InvalidInput) as refused:
        _search(_images(store, getter), MEMBER, "registry.example.com")
    assert "token service's address is not allowed" in str(refused.value)
    assert "127.0.0.1" not in str(refused.value)
    assert network.hosts == ["93.184.215.14"]  # the catalog's 401; never the realm


def test_a_public_registry_with_a_public_realm_is_searched_through_it(
        store: Store, getter: HttpGetter, network: Network) -> None:
    network.realm = "https://auth.example.com/token"
    _register(store, MEMBER, "registry.example.com")
    assert _search(_images(store, getter), MEMBER, "registry.example.com") == [
        "registry.example.com/team/busybox"]
    assert network.hosts == ["93.184.215.14", "93.184.215.15", "93.184.215.14"]
    token = network.requests[1]
    assert token.headers["host"] == "auth.example.com"
    assert token.url.params["scope"] == "registry:catalog:*"
