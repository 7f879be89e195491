"""The request bodies the OpenAPI document describes stay in step with the parsers."""

from __future__ import annotations

from capsuled.api import openapi as doc
from capsuled.domain.container_request import KNOWN, parse_container_request
from capsuled.domain.template import CONTAINER_KEYS, TOP_KEYS, parse_template


def test_container_create_documents_every_field_the_parser_knows() -> None:
    assert set(doc.CONTAINER_FIELDS) == KNOWN


def test_template_documents_the_fields_the_parser_knows() -> None:
    assert set(doc.TEMPLATE["properties"]) == TOP_KEYS
    container = doc.TEMPLATE["properties"]["spec"]["properties"]["containers"]["items"]
    assert set(container["properties"]) == CONTAINER_KEYS


def test_the_examples_are_accepted() -> None:
    parse_template(doc.CAPSULE_EXAMPLE["template"])
    parse_container_request(doc.CONTAINER_EXAMPLE)
