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


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    output: bytes
    exec_id: str


@dataclass(frozen=True)
class ImageInfo:
    id: str
    repo: str
    tag: str
    size: int  # bytes
    created: int  # epoch seconds


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

    def exec_run(self, container_id: str, command: list[str]) -> ExecResult: ...

    def top(self, container_id: str, ps_args: str | None) -> dict[str, Any]: ...

    def stats(self, container_id: str) -> dict[str, Any]:
        """Docker's one-shot stats document."""
        ...

    def get_archive(self, container_id: str, path: str) -> tuple[bytes, dict[str, Any]]: ...

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
