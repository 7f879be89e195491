"""CapsuledError → Zun's error body, with the status capsuled/http_status.py gives it."""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from capsuled import errors
from capsuled.http_status import status_for

LOG = logging.getLogger(__name__)


def _kebab(name: str) -> str:
    """Zun's error code for a class name: InvalidInput → invalid-input, and an acronym
    stays one word (HTTPException → http-exception)."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "-", name).lower()


# Routing's own answers (no such path, wrong method), named as Zun's clients expect.
_HTTP_CODES = {404: "not-found", 405: "method-not-allowed", 413: "payload-too-large"}


def error_response(request: Request, status: int, code: str, title: str, detail: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"errors": [{"request_id": getattr(request.state, "request_id", ""),
                        "code": f"container.{code}", "status": status, "title": title,
                        "detail": detail if detail is not None else title, "links": []}]}
    return JSONResponse(body, status_code=status, headers=headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(errors.CapsuledError)
    async def _capsuled(request: Request, exc: errors.CapsuledError) -> JSONResponse:
        status = status_for(exc)
        if status >= 500 and not isinstance(exc, errors.Unavailable):
            return _internal(request, exc)
        detail = "\n".join(exc.problems) if isinstance(exc, errors.InvalidInput) else exc.message
        headers = {"Retry-After": "5"} if isinstance(
            exc, (errors.Unavailable, errors.TooManyRequests)) else None
        return error_response(request, status, _kebab(type(exc).__name__), exc.message, detail, headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [f"{'.'.join(str(x) for x in e['loc'][1:]) or e['loc'][0]}: {e['msg']}"
                    for e in exc.errors()]
        return error_response(request, 400, "invalid-input", "; ".join(problems), "\n".join(problems))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        title = {404: "The resource could not be found.",
                 405: f"Method {request.method} is not allowed on {request.url.path}."}.get(
            exc.status_code, str(exc.detail))
        code = _HTTP_CODES.get(exc.status_code, f"http-{exc.status_code}")
        return error_response(request, exc.status_code, code, title)



def _internal(request: Request, exc: Exception) -> JSONResponse:
    return internal_error(getattr(request.state, "request_id", ""), request.url.path, exc)


def internal_error(request_id: str, path: str, exc: BaseException) -> JSONResponse:
    """A bug: log it with a correlation id and tell the client only that id."""
    correlation = str(uuid.uuid4())
    LOG.error("internal error correlation_id=%s path=%s", correlation, path, exc_info=exc)
    detail = ("Your request could not be handled because of a problem in the server. "
              f"Error Correlation id is: {correlation}")
    body = {"errors": [{"request_id": request_id, "code": "container.", "status": 500,
                        "title": "Internal Server Error", "detail": detail, "links": []}]}
    return JSONResponse(body, status_code=500)
