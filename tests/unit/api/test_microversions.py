"""OpenStack-API-Version negotiation (zun-spec §1.2)."""

from __future__ import annotations

import pytest

from capsuled.api.microversions import ApiVersion, parse, response_headers
from capsuled.errors import VersionNotAcceptable

RANGE_MSG = ("Version {v} was requested but the minor version is not supported by this server. "
             "The supported range is 1.1 to 1.40.")


@pytest.mark.parametrize(("header", "expected"), [
    (None, ApiVersion(1, 1)),
    ("", ApiVersion(1, 1)),
    ("   ", ApiVersion(1, 1)),
    ("container 1.1", ApiVersion(1, 1)),
    ("container 1.32", ApiVersion(1, 32)),
    ("container 1.40", ApiVersion(1, 40)),
    ("container latest", ApiVersion(1, 40)),
    ("Container LATEST", ApiVersion(1, 40)),
    ("  container   1.31  ", ApiVersion(1, 31)),
    ("compute 2.1, container 1.30", ApiVersion(1, 30)),
    ("container 1.30, compute 2.1", ApiVersion(1, 30)),
    ("compute 2.1,container latest", ApiVersion(1, 40)),
], ids=["none", "empty", "blank", "min", "1.32", "max", "latest", "latest-any-case",
        "padded", "other-service-first", "other-service-last", "no-space-after-comma"])
def test_parse_accepts_header(header: str | None, expected: ApiVersion) -> None:
    assert parse(header) == expected


@pytest.mark.parametrize("header", [
    "container",
    "1.32",
    "container 1",
    "container 1.3.2",
    "container abc",
    "container 1.x",
    "container-1.32",
    "compute 2.1, container",
    "compute 2.1,",
], ids=["no-version", "no-service", "no-minor", "three-parts", "abc", "non-numeric-minor",
        "dash", "second-part-malformed", "trailing-comma"])
def test_parse_rejects_header_when_malformed(header: str) -> None:
    with pytest.raises(VersionNotAcceptable) as exc:
        parse(header)
    assert exc.value.message.startswith(f"Invalid OpenStack-API-Version header: {header!r}")


@pytest.mark.parametrize("header", ["compute 1.2", "compute 2.1, volume 3.0", "compute latest"],
                         ids=["compute", "two-other-services", "compute-latest"])
def test_parse_rejects_header_when_no_container_service(header: str) -> None:
    with pytest.raises(VersionNotAcceptable) as exc:
        parse(header)
    assert exc.value.message == (f"Invalid OpenStack-API-Version header: {header!r}; "
                                 "no 'container' version in it")


@pytest.mark.parametrize(("header", "version"), [
    ("container 1.0", "1.0"),
    ("container 1.41", "1.41"),
    ("container 0.9", "0.9"),
    ("container 2.0", "2.0"),
    ("compute 2.1, container 1.41", "1.41"),
], ids=["below-min", "above-max", "major-0", "major-2", "listed-with-compute"])
def test_parse_rejects_version_when_out_of_range(header: str, version: str) -> None:
    with pytest.raises(VersionNotAcceptable) as exc:
        parse(header)
    assert exc.value.message == RANGE_MSG.format(v=version)


@pytest.mark.parametrize(("version", "effective"), [
    (ApiVersion(1, 1), "container 1.1"),
    (ApiVersion(1, 32), "container 1.32"),
    (ApiVersion(1, 40), "container 1.40"),
])
def test_response_headers_carry_range_and_effective_version(version: ApiVersion,
                                                            effective: str) -> None:
    assert response_headers(version) == {
        "OpenStack-API-Minimum-Version": "container 1.1",
        "OpenStack-API-Maximum-Version": "container 1.40",
        "OpenStack-API-Version": effective,
        "Vary": "OpenStack-API-Version",
    }


def test_response_headers_echo_parsed_request_value() -> None:
    assert response_headers(parse("container 1.35"))["OpenStack-API-Version"] == "container 1.35"


@pytest.mark.parametrize(("version", "boundary", "expected"), [
    (ApiVersion(1, 31), (1, 32), False),
    (ApiVersion(1, 32), (1, 32), True),
    (ApiVersion(1, 40), (1, 32), True),
])
def test_api_version_at_least_when_compared_to_boundary(version: ApiVersion,
                                                        boundary: tuple[int, int],
                                                        expected: bool) -> None:
    assert version.at_least(boundary) is expected


def test_api_version_orders_numerically() -> None:
    assert sorted([ApiVersion(1, 10), ApiVersion(1, 9), ApiVersion(1, 40)]) == [
        ApiVersion(1, 9), ApiVersion(1, 10), ApiVersion(1, 40)]
    assert str(ApiVersion(1, 9)) == "1.9"
