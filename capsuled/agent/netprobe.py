"""TCP and HTTP checks run from the host inside a capsule's network namespace.

A socket belongs to the network namespace of the thread that created it, so a short-lived
thread joins the sandbox's namespace (setns on /proc/PID/ns/net), creates the socket and
exits; the agent then uses that socket from its own thread. The address is always
127.0.0.1 in that namespace: a probe reaches only its own capsule, never the host's
network or another project's. Every step is bounded by the probe's timeout, and an HTTP
answer is read only as far as its status line (at most MAX_STATUS_LINE bytes).
"""

from __future__ import annotations

import ctypes
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable

CLONE_NEWNET = 0x40000000
MAX_STATUS_LINE = 4096
_LIBC = ctypes.CDLL(None, use_errno=True)


class ProbeFailed(Exception):
    """The check failed; the message says how (it is shown to the capsule's owner)."""


PidOf = Callable[[], int]


def _socket_in(pid_of: PidOf) -> socket.socket:
    """A TCP socket in the network namespace of the process `pid_of` names. The pid is asked
    again once its namespace is open: if it changed (the sandbox ended and the pid could
    now be anyone's), nothing is made."""
    pid = pid_of()
    try:
        fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise ProbeFailed(f"the capsule's network namespace is gone ({exc.strerror})") from None
    made: list[socket.socket] = []
    failed: list[str] = []

    def enter() -> None:  # this thread ends in the sandbox's namespace: nothing else runs in it
        if _LIBC.setns(fd, CLONE_NEWNET) != 0:
            failed.append(f"cannot enter the capsule's network namespace "
                          f"({os.strerror(ctypes.get_errno())})")
            return
        made.append(socket.socket(socket.AF_INET, socket.SOCK_STREAM))

    try:
        if pid_of() != pid:
            raise ProbeFailed("the capsule's sandbox changed during the probe")
        t = threading.Thread(target=enter, name="probe-netns", daemon=True)
        t.start()
        t.join()
    finally:
        os.close(fd)
    if not made:
        raise ProbeFailed(failed[0] if failed else "cannot make a socket in the capsule")
    return made[0]


def _connect(pid_of: PidOf, port: int, timeout: float) -> socket.socket:
    s = _socket_in(pid_of)
    s.settimeout(timeout)
    try:
        s.connect(("127.0.0.1", port))
    except TimeoutError:
        s.close()
        raise ProbeFailed(f"connecting to port {port} timed out after {timeout:g}s") from None
    except OSError as exc:
        s.close()
        raise ProbeFailed(f"connecting to port {port}: {exc.strerror or exc}") from None
    return s


def check_tcp(pid_of: PidOf, port: int, timeout: float) -> None:
    """Raises ProbeFailed unless something accepts a connection on `port`."""
    _connect(pid_of, port, timeout).close()


def check_http(pid_of: PidOf, port: int, path: str, scheme: str, headers: list[tuple[str, str]],
               timeout: float) -> int:
    """GET `path`; returns the status, or raises ProbeFailed unless it is 200-399.
    HTTPS is not verified (as Kubernetes: the probe checks liveness, not identity)."""
    deadline = time.monotonic() + timeout
    raw = _connect(pid_of, port, timeout)
    try:
        conn: socket.socket = raw
        if scheme == "HTTPS":
            ctx = ssl.create_default_context()
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
            conn = ctx.wrap_socket(raw, server_hostname="localhost")
        names = {k.lower() for k, _ in headers}
        lines = [f"GET {path} HTTP/1.1"]
        lines += [f"Host: 127.0.0.1:{port}"] if "host" not in names else []
        lines += ["User-Agent: capsuled-probe/1"] if "user-agent" not in names else []
        lines += ["Accept: */*", "Connection: close", *(f"{k}: {v}" for k, v in headers)]
        conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        head = b""
        while b"\r\n" not in head and len(head) < MAX_STATUS_LINE:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            conn.settimeout(left)
            chunk = conn.recv(MAX_STATUS_LINE - len(head))
            if not chunk:
                break
            head += chunk
        parts = head.split(b"\r\n", 1)[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
            raise ProbeFailed(f"port {port} did not answer HTTP")
        status = int(parts[1])
        if not 200 <= status < 400:
            raise ProbeFailed(f"HTTP probe failed with status {status}")
        return status
    except TimeoutError:
        raise ProbeFailed(f"HTTP GET {path} timed out after {timeout:g}s") from None
    except (OSError, ssl.SSLError) as exc:
        raise ProbeFailed(f"HTTP GET {path}: {exc}") from None
    finally:
        raw.close()
