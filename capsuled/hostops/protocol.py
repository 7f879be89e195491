"""What the API may ask of the host that runs a container, beyond desired state.

Reads (logs, exec, top, stats, archives) and imperative lifecycle actions (start, stop,
kill, …) go to the container's host directly, addressed by runtime container id. In
all-in-one mode the runtime driver itself serves them in-process; in multi-host mode the
API reaches the agent of that host over HTTP with the same calls.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol


# Bounds of the buffers and waits a host operation may take; the API passes its settings
# (config.ApiSettings), these are the defaults for other callers and older peers.
EXEC_MAX_OUTPUT = 1_048_576  # bytes of a non-interactive exec's output
EXEC_TIMEOUT = 60  # seconds a non-interactive exec is waited for
ARCHIVE_MAX_BYTES = 64 * 1_048_576  # bytes of a get_archive tar
# A non-follow logs read answers with at most the newest this many bytes: Docker keeps up
# to 100 MB per container with the local driver, and the answer is held in memory.
LOGS_MAX_BYTES = 8 * 1_048_576


@dataclass(frozen=True)
class ExecResult:
    """A finished (or given up on) exec. `exit_code` is None while the command still runs:
    when its output passed the cap (`truncated`, reading stopped there) or its time ran
    out (`timed_out`)."""

    exit_code: int | None
    output: bytes
    exec_id: str
    truncated: bool = False
    timed_out: bool = False


@dataclass(frozen=True)
class ImageInfo:
    id: str
    repo: str
    tag: str
    size: int  # bytes
    created: int  # epoch seconds
    project: str | None = None  # the committing project's label (capsuled.project), if any


class RawStream(Protocol):
    """A container's terminal: bytes both ways until either side closes."""

    def recv(self, size: int) -> bytes:
        """Up to `size` bytes; b"" when the container side has closed."""
        ...

    def sendall(self, data: bytes) -> None: ...

    def close(self) -> None: ...


class ContainerOps(Protocol):
    def start(self, container_id: str) -> None: ...

    def stop(self, container_id: str, timeout: int) -> None: ...

    def restart(self, container_id: str, timeout: int) -> None: ...

    def kill(self, container_id: str, signal: str | int | None) -> None: ...

    def pause(self, container_id: str) -> None: ...

    def unpause(self, container_id: str) -> None: ...

    def update_resources(self, container_id: str, nano_cpus: int | None,
                         memory_bytes: int | None) -> None: ...

    def logs(self, container_id: str, stdout: bool, stderr: bool, timestamps: bool,
             tail: int | None, since: int | None) -> bytes: ...

    def follow_logs(self, container_id: str, stdout: bool, stderr: bool, timestamps: bool,
                    tail: int | None, since: int | None) -> Iterator[bytes]: ...

    def exec_run(self, container_id: str, command: list[str], max_output: int = EXEC_MAX_OUTPUT,
                 timeout: int = EXEC_TIMEOUT) -> ExecResult:
        """Run `command`, keeping at most `max_output` bytes of its (stdout and stderr)
        output and waiting at most `timeout` seconds."""
        ...

    def top(self, container_id: str, ps_args: str | None) -> dict[str, Any]: ...

    def stats(self, container_id: str) -> dict[str, Any]:
        """Docker's one-shot stats document."""
        ...

    def get_archive(self, container_id: str, path: str,
                    max_bytes: int = ARCHIVE_MAX_BYTES) -> tuple[bytes, dict[str, Any]]:
        """The tar of `path` and Docker's stat of it; PayloadTooLarge (read as a stream,
        refused once past it) when the tar is larger than `max_bytes`."""
        ...

    def put_archive(self, container_id: str, path: str, data: bytes) -> None: ...

    def attach(self, container_id: str) -> RawStream: ...

    def resize(self, container_id: str, height: int, width: int) -> None: ...

    def exec_interactive(self, container_id: str, command: list[str]) -> str:
        """Create a TTY exec session; its id, for `exec_stream`."""
        ...

    def exec_stream(self, exec_id: str) -> RawStream: ...

    def exec_resize(self, exec_id: str, height: int, width: int) -> None: ...

    def list_images(self) -> list[ImageInfo]: ...

    def pull_image(self, repo: str, tag: str) -> ImageInfo: ...

    def remove_image(self, ref: str) -> None: ...

    def commit(self, container_id: str, repository: str, tag: str, project: str) -> ImageInfo:
        """A new image from the container (paused meanwhile), as `repository:tag`, labelled
        with `project`. Conflict when that reference already exists on the host and is not
        an image `project` committed: a tenant must never replace another's or a base image."""
        ...

    def search_images(self, term: str, limit: int) -> dict[str, Any]:
        """Docker Hub's search through the engine: {"results": [{name, description,
        star_count, is_official, is_automated}]}, at most `limit`."""
        ...
