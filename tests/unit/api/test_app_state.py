"""Routers read their services from `app.state` through one typed accessor."""

from __future__ import annotations

import pytest
from fastapi import FastAPI, Request

from capsuled.api.state import app_state


def _request(app: FastAPI) -> Request:
    return Request({"type": "http", "app": app, "method": "GET", "path": "/", "headers": []})


def test_it_returns_what_create_app_put_there() -> None:
    app = FastAPI()
    app.state.tokens = "a service"
    assert app_state(_request(app), "tokens", str) == "a service"


def test_a_wiring_mistake_names_the_attribute_and_both_types() -> None:
    app = FastAPI()
    app.state.tokens = 42
    with pytest.raises(TypeError, match=r"app.state.tokens is a int, not a str"):
        app_state(_request(app), "tokens", str)
