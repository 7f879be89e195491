"""Typed reads of what create_app() put on `app.state`, so routers get checked types."""

from __future__ import annotations

from typing import TypeVar

from fastapi import Request

T = TypeVar("T")


def app_state(request: Request, name: str, kind: type[T]) -> T:
    """`request.app.state.<name>`, which create_app() set to a `kind`."""
    value = getattr(request.app.state, name)
    if not isinstance(value, kind):  # a wiring mistake in the composition root
        raise TypeError(f"app.state.{name} is a {type(value).__name__}, not a {kind.__name__}")
    return value
