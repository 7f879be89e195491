"""Webhook rules, pure: event patterns, signatures, URL parsing, which addresses only admins
may reach (IPv4, IPv6, IPv4 inside IPv6), and retry → dead letter."""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime, timedelta
from ipaddress import ip_address

import pytest

from capsuled.domain.egress import parse_url, restriction
from capsuled.domain.webhooks import (ACTIVE, DEAD_LETTERING, RETRYING, Progress, RetryPolicy,
                                      failed, matches, parse_events, secret_problem,
                                      should_attempt, signature, verify)
from capsuled.errors import InvalidInput


# -- event patterns -----------------------------------------------------------------------

@pytest.mark.parametrize("patterns,event,wanted", [
    ([], "capsule.update", True),
    (["capsule.*"], "capsule.update", True),
    (["capsule.*"], "capsule.create.start", True),
    (["capsule.*"], "container.update", False),
    (["capsule.*"], "capsule", False),
    (["*.update"], "container.update", True),
    (["*.update"], "capsule.create.start", False),
    (["capsule.create.*"], "capsule.create.error", True),
    (["capsule.create.*"], "capsule.delete.end", False),
    (["container.update"], "container.update", True),
    (["container.update"], "container.update.more", False),
    (["capsule.delete.end", "container.*"], "container.create.start", True),
])
def test_patterns_select_event_types(patterns: list[str], event: str, wanted: bool) -> None:
    assert matches(parse_events(patterns), event) is wanted


def test_patterns_are_checked_one_by_one_and_named() -> None:
    with pytest.raises(InvalidInput) as exc:
        parse_events(["capsule.*", "Capsule", "a..b", 7, "x" * 65, "capsule.*x"])
    assert [p.split(":")[0] for p in exc.value.problems] == [
        "events[1]", "events[2]", "events[3]", "events[4]", "events[5]"]
    with pytest.raises(InvalidInput, match="^events: must be a list"):
        parse_events("capsule.*")
    with pytest.raises(InvalidInput, match="at most 32"):
        parse_events([f"e{i}" for i in range(33)])


def test_repeats_go_and_a_bare_star_means_every_event() -> None:
    assert parse_events(["capsule.*", "capsule.*", "container.update"]) == [
        "capsule.*", "container.update"]
    assert parse_events(["capsule.*", "*"]) == []
    assert parse_events(None) == []


# -- signatures ---------------------------------------------------------------------------

def test_the_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    secret, stamp, body = "s3cret-s3cret-s3cret", "1767225600", b'{"seq":1}'
    expected = hmac.new(secret.encode(), b'1767225600.{"seq":1}', hashlib.sha256).hexdigest()
    assert signature(secret, stamp, body) == f"sha256={expected}"
    assert verify(secret, stamp, body, f"sha256={expected}")
    assert not verify(secret, "1767225601", body, f"sha256={expected}")  # replayed later
    assert not verify(secret, stamp, b'{"seq":2}', f"sha256={expected}")
    assert not verify("another-secret-of-16", stamp, body, f"sha256={expected}")


@pytest.mark.parametrize("secret,ok", [("a" * 16, True), ("a" * 15, False), ("a" * 257, False),
                                       ("tab\there-0123456", False), ("é" * 16, False), (16, False)])
def test_secrets_are_long_printable_ascii(secret: object, ok: bool) -> None:
    assert (secret_problem(secret) is None) is ok


# -- URLs ---------------------------------------------------------------------------------

def test_urls_parse_into_where_to_connect_and_what_to_ask() -> None:
    t = parse_url("https://Hooks.Example.com/in?x=1")
    assert (t.scheme, t.host, t.port, t.path) == ("https", "hooks.example.com", 443, "/in?x=1")
    assert t.ip is None and t.host_header() == "hooks.example.com"
    assert t.url_at(ip_address("93.184.215.14")) == "https://93.184.215.14:443/in?x=1"
    v6 = parse_url("http://[2606:4700::1111]:8080")
    assert (v6.host, v6.port, v6.path) == ("2606:4700::1111", 8080, "/")
    assert v6.host_header() == "[2606:4700::1111]:8080"
    assert v6.url_at(ip_address("2606:4700::1111")) == "http://[2606:4700::1111]:8080/"


@pytest.mark.parametrize("url,words", [
    ("ftp://example.com/", "http:// or https://"),
    ("example.com/hook", "http:// or https://"),
    ("https://user:pw@example.com/", "user name or password"),
    ("https://example.com/#frag", "fragment"),
    ("https://example.com:99999/", "invalid port"),
    ("https://exa mple.com/", "spaces"),
    ("https://ex\u00e4mple.com/", "non-ASCII"),
    ("https:///nohost", "names no host"),
    ("http://2130706433/", "neither a host name"),  # 127.0.0.1 to the C resolver
    ("http://0x7f.1/", "neither a host name"),
    ("http://[fe80::1%25eth0]/", "zone"),
    ("https://-bad-.example/", "neither a host name"),
    ("https://example.com/" + "a" * 2100, "at most 2048"),
    (None, "is required"),
])
def test_bad_urls_are_refused_naming_the_field(url: object, words: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        parse_url(url)
    assert exc.value.problems[0].startswith("url: ") and words in exc.value.problems[0]


# -- addresses only admins may reach ------------------------------------------------------

@pytest.mark.parametrize("address,kind", [
    ("127.0.0.1", "loopback"), ("127.8.9.10", "loopback"), ("::1", "loopback"),
    ("10.1.2.3", "private"), ("172.16.0.1", "private"), ("192.168.1.1", "private"),
    ("fc00::1", "private"), ("fd12:3456::1", "private"),
    ("169.254.169.254", "link-local"), ("fe80::1", "link-local"),
    ("224.0.0.1", "multicast"), ("239.1.1.1", "multicast"), ("ff02::1", "multicast"),
    ("0.0.0.0", "unspecified"), ("::", "unspecified"),
    ("240.0.0.1", "reserved"), ("255.255.255.255", "reserved"),
    ("100.64.0.1", "reserved"), ("198.18.0.1", "private"), ("2001:db8::1", "private"),
    # IPv4 inside IPv6: judged as the IPv4 address it carries
    ("::ffff:127.0.0.1", "loopback"), ("::ffff:10.0.0.1", "private"),
    ("::ffff:169.254.169.254", "link-local"), ("2002:7f00:1::", "loopback"),
    ("2002:a00:1::1", "private"),
    ("64:ff9b::7f00:1", "reserved"),  # NAT64
    ("::127.0.0.1", "reserved"),  # IPv4-compatible (deprecated)
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "private"),  # Teredo
])
def test_special_addresses_are_for_admins(address: str, kind: str) -> None:
    assert restriction(ip_address(address)) == kind


@pytest.mark.parametrize("address", ["8.8.8.8", "93.184.215.14", "2606:4700::1111",
                                     "::ffff:8.8.8.8", "2002:808:808::1"])
def test_globally_routable_unicast_addresses_are_for_everyone(address: str) -> None:
    assert restriction(ip_address(address)) is None


# -- retry, then dead letter --------------------------------------------------------------

T0 = datetime(2026, 1, 1)
POLICY = RetryPolicy(initial=1, maximum=60, window=600, max_attempts=5)


def test_an_event_is_retried_until_the_window_then_dead_lettered() -> None:
    p = Progress()
    out = failed(POLICY, p, 7, T0)
    assert (out.progress.state, out.progress.retry_seq, out.attempts, out.dead_letter) == (
        RETRYING, 7, 1, False)
    out = failed(POLICY, out.progress, 7, T0 + timedelta(seconds=300))
    assert (out.attempts, out.dead_letter) == (2, False)
    out = failed(POLICY, out.progress, 7, T0 + timedelta(seconds=600))
    assert (out.progress.state, out.attempts, out.dead_letter) == (DEAD_LETTERING, 3, True)
    assert out.progress.probe_after == T0 + timedelta(seconds=660)


def test_max_attempts_dead_letters_within_the_window() -> None:
    p = Progress()
    for n in range(1, 6):
        out = failed(POLICY, p, 9, T0 + timedelta(seconds=n))
        p = out.progress
    assert (out.attempts, out.dead_letter, p.state) == (5, True, DEAD_LETTERING)


def test_a_new_event_starts_its_own_count() -> None:
    p = failed(POLICY, Progress(), 7, T0).progress
    out = failed(POLICY, p, 8, T0 + timedelta(seconds=900))
    assert (out.progress.retry_seq, out.attempts, out.dead_letter) == (8, 1, False)


def test_a_dead_lettering_subscription_tries_only_at_probe_time() -> None:
    p = failed(POLICY, Progress(), 7, T0 + timedelta(seconds=600)).progress
    p = failed(POLICY, Progress(RETRYING, 7, 1, T0), 7, T0 + timedelta(seconds=600)).progress
    assert p.state == DEAD_LETTERING
    assert not should_attempt(p, T0 + timedelta(seconds=630))  # dead-lettered unattempted
    assert should_attempt(p, T0 + timedelta(seconds=660))
    out = failed(POLICY, p, 20, T0 + timedelta(seconds=660))  # the probe failed
    assert out.dead_letter and out.progress.probe_after == T0 + timedelta(seconds=720)
    assert should_attempt(Progress(ACTIVE), T0)
