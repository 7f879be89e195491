"""The one table from the error taxonomy to HTTP status codes.

The API's error bodies (api/errors.py), the agent's ops endpoint (hostops/server.py) and
the ops client reading an agent's answer (hostops/client.py) all go by it, so a class
means the same status on every hop. errors.py stays free of HTTP.
"""

from __future__ import annotations

from capsuled import errors

# Per status, the most general class comes first: error_class_for() answers with it.
STATUS: dict[type[errors.CapsuledError], int] = {
    errors.InvalidInput: 400,
    errors.NotAuthenticated: 401,
    errors.Forbidden: 403,
    errors.NotFound: 404,
    errors.VersionNotAcceptable: 406,
    errors.Conflict: 409,
    errors.Gone: 410,
    errors.UnsupportedMediaType: 415,
    errors.PayloadTooLarge: 413,
    errors.TooManyRequests: 429,
    errors.Unavailable: 503,
    errors.DriverError: 500,
    errors.RuntimeRejected: 400,
    errors.ImageNotFound: 404,
    errors.RuntimeConflict: 409,
}


def status_for(exc: BaseException) -> int:
    """The status of the nearest class of `exc` in STATUS; 500 for anything else."""
    for cls in type(exc).__mro__:
        if issubclass(cls, errors.CapsuledError) and cls in STATUS:
            return STATUS[cls]
    return 500


def error_class_for(status: int) -> type[errors.CapsuledError] | None:
    """The most general class answered with `status`, or None if none is."""
    return next((cls for cls, s in STATUS.items() if s == status), None)
