"""The one error taxonomy. No HTTP and no Docker here: http_status.py maps these to
status codes, drivers translate their SDK's exceptions into them.

    CapsuledError
     ├── InvalidInput            a request or template is wrong (carries every problem)
     │   └── InvalidConfig       the settings are (a file's key, a variable, an option)
     ├── NotAuthenticated        no token, or an unknown/expired one
     ├── Forbidden               policy says no
 │   └── OverQuota           the project's quota would be exceeded
     ├── NotFound                missing, or not visible to the caller
     ├── Conflict                ambiguous name, wrong state, stale generation
     ├── VersionNotAcceptable    microversion outside the supported range
     ├── UnsupportedMediaType    body is not JSON where JSON is required
     ├── PayloadTooLarge         a body over the size limit (refused before it is read)
     ├── TooManyRequests         a caller over a concurrency limit (streams, sessions)
     ├── Unavailable             a dependency (database, Docker, agent) is unreachable; retry
     └── DriverError             a runtime operation failed for good (bad image, bad spec)
         ├── ImageNotFound
         ├── RuntimeRejected     the runtime refused a request as invalid (e.g. a bad signal)
         └── RuntimeConflict     the runtime refused because of the object's state (e.g. paused)
"""

from __future__ import annotations


class CapsuledError(Exception):
    """Base class; `message` is what a user sees."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(CapsuledError):
    """Bad input. `problems` lists each as 'field.path: what is wrong'."""

    def __init__(self, problems: list[str] | str, summary: str | None = None) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        if summary is None:
            summary = "; ".join(self.problems) if len(self.problems) <= 3 else (
                f"{len(self.problems)} problems: " + "; ".join(self.problems))
        super().__init__(summary)


class InvalidConfig(InvalidInput):
    """The configuration is wrong: each problem names the option, the environment variable
    or the file, section and key it came from. `capsuled` exits with EX_CONFIG (78) on it,
    which the systemd units do not restart after."""


class NotAuthenticated(CapsuledError):
    pass


class Forbidden(CapsuledError):
    pass


class OverQuota(Forbidden):
    pass


class NotFound(CapsuledError):
    pass


class Conflict(CapsuledError):
    pass


class VersionNotAcceptable(CapsuledError):
    pass


class Gone(CapsuledError):
    """What was asked for existed but is no longer kept (a watch resumed from a pruned seq)."""


class UnsupportedMediaType(CapsuledError):
    pass


class PayloadTooLarge(CapsuledError):
    pass


class TooManyRequests(CapsuledError):
    pass


class Unavailable(CapsuledError):
    pass


class DriverError(CapsuledError):
    pass


class ImageNotFound(DriverError):
    pass


class RuntimeRejected(DriverError):
    pass


class RuntimeConflict(DriverError):
    pass
