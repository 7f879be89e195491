"""`capsule container exec` and `attach`: run a command in a container, or bridge the
local terminal to the server's websocket, which carries raw terminal bytes both ways."""

from __future__ import annotations

import base64
import binascii
import io
import os
import shlex
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, Annotated, Any, Protocol

import typer

from capsuled.cli.capsule.client import TIMEOUT, CliError, ConnectionFailed, _reason
from capsuled.cli.capsule.container_common import (
    INTERRUPTED,
    CapsuleOpt,
    IdentArg,
    binary_stdin,
    binary_stdout,
    container_client,
    exit_status,
    trailing_words,
)
from capsuled.cli.capsule.output import Format, echo_data
from capsuled.cli.capsule.shared import UsageProblem, reporting, runtime_of

CHUNK = 65536
EOT = b"\x04"  # ^D: end of input for the program behind the remote TTY
EOT_REPEAT = 0.5  # seconds between ^Ds once stdin has ended
DETACH = b"\x10\x11"  # ^P ^Q, as in docker: leave a terminal session without ending it


def exec_(
    ctx: typer.Context,
    ident: IdentArg,
    command: Annotated[list[str], typer.Argument(
        metavar="COMMAND [ARG...]", show_default=False,
        help="The program and its arguments; everything after CONTAINER is passed on.")],
    interactive: Annotated[bool, typer.Option(
        "--interactive", "-i", help="Send stdin to the command (a terminal session).")] = False,
    tty: Annotated[bool, typer.Option(
        "--tty", "-t", help="A terminal session; with -i, the local terminal goes raw.")] = False,
    capsule: CapsuleOpt = None,
    output: Annotated[Format, typer.Option(
        "--output", "-o", "--format", case_sensitive=False,
        help="table: the command's output as is; json: the server's answer (not with -i/-t).")]
        = Format.table,
) -> None:
    """Run a command in a running container.

    Without -i/-t the command runs to its end; its output (stdout and stderr together)
    is printed byte for byte and `capsule` exits with the command's exit code.

    With -i and/or -t the command gets a terminal on the server and this one is joined to
    it over a websocket: with -it on a terminal, keys go through raw (Ctrl-C included);
    Ctrl-P Ctrl-Q detaches. When stdin is not a terminal it is sent as is, then ^D
    (repeated until the session ends). The exit code of a session is not known: exit 0.

    Options go before CONTAINER: everything after it is the command (a -- in front of
    it is dropped).

    Example:

      capsule container exec web cat /etc/hostname
      capsule container exec -it web sh
      echo 'ls /' | capsule container exec -i web sh
    """
    argv = shlex.join(trailing_words(command))
    if not argv:
        raise UsageProblem("missing COMMAND after CONTAINER", ctx=ctx)
    session = interactive or tty
    if session and output.machine:
        raise UsageProblem("-i/-t open a terminal session; they cannot be combined with "
                           "--format json", ctx=ctx)
    rt = runtime_of(ctx)
    with reporting(rt), container_client(rt) as client:
        if not session:
            result = client.execute(ident, argv, capsule=capsule)
        else:
            uuid = client.get(ident, capsule)["uuid"] if capsule else ident
            started = client.execute(uuid, argv, interactive=True)
            url, exec_id = started.get("proxy_url"), started.get("exec_id")
            if not isinstance(url, str) or not url:
                raise CliError("the server started no terminal session (no proxy_url in its answer)")

            def resize(width: int, height: int) -> None:
                if exec_id:
                    client.execute_resize(uuid, str(exec_id), width, height)
            _terminal_session(url, send_input=interactive, raw=interactive and tty, resize=resize)
            return
    if output.machine:
        echo_data(output, result)
    else:
        out = binary_stdout()
        out.write(_exec_output(result))
        out.flush()
    status = exit_status(result.get("exit_code"))
    if status:
        raise typer.Exit(status)


def _exec_output(result: dict[str, Any]) -> bytes:
    encoded = result.get("output_base64")
    if isinstance(encoded, str):
        try:
            return base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            pass
    return str(result.get("output") or "").encode()


def attach(
    ctx: typer.Context,
    ident: IdentArg,
    no_stdin: Annotated[bool, typer.Option(
        "--no-stdin", help="Only watch the output: send nothing (Ctrl-C leaves).")] = False,
    capsule: CapsuleOpt = None,
) -> None:
    """Join the terminal of a container made with -i/-t (its main process's stdin and output).

    On a terminal, keys go through raw, Ctrl-C included (which may stop the container's
    main process); Ctrl-P Ctrl-Q detaches and leaves it running. When stdin is not a
    terminal it is sent as is, then ^D (repeated until the session ends), which ends a
    shell: use --no-stdin to watch without typing.

    Example:

      capsule run -it --name shell busybox sh
      capsule container attach shell
    """
    rt = runtime_of(ctx)
    with reporting(rt), container_client(rt) as client:
        uuid = client.get(ident, capsule)["uuid"] if capsule else ident
        url = client.attach(uuid)
        _terminal_session(url, send_input=not no_stdin, raw=not no_stdin,
                          resize=lambda w, h: client.resize(uuid, w, h))


class Socket(Protocol):
    """What the terminal bridge needs of a websocket: bytes in, bytes out, b"" at the end."""

    def send(self, data: bytes) -> None: ...

    def recv(self) -> bytes: ...

    def close(self) -> None: ...


class WebSocket:
    """A websocket-backed Socket (the `websockets` package's synchronous client)."""

    def __init__(self, url: str) -> None:
        from websockets.exceptions import (
            ConnectionClosed,
            InvalidStatus,
            WebSocketException,
        )
        from websockets.sync.client import connect
        from websockets.typing import Subprotocol

        self._closed = ConnectionClosed
        host = url.split("://", 1)[-1].split("/", 1)[0]
        try:
            self._ws = connect(url, subprotocols=[Subprotocol("binary")], open_timeout=TIMEOUT,
                               compression=None, max_size=None)
        except InvalidStatus as exc:
            raise CliError(f"the server refused the terminal connection (HTTP "
                           f"{exc.response.status_code}); its URL works once and for a minute: "
                           "try again") from None
        except (OSError, TimeoutError, WebSocketException) as exc:
            raise ConnectionFailed(f"cannot open the terminal at {host} ({_reason(exc)})") from None

    def send(self, data: bytes) -> None:
        try:
            self._ws.send(data)
        except self._closed:
            raise EOFError from None

    def recv(self) -> bytes:
        try:
            message = self._ws.recv()
        except self._closed:
            return b""
        return message.encode() if isinstance(message, str) else bytes(message)

    def close(self) -> None:
        self._ws.close()


# Tests put a fake here: all that a terminal session sends and receives goes through it.
connect_terminal: Callable[[str], Socket] = WebSocket


def _terminal_session(url: str, send_input: bool, raw: bool,
                      resize: Callable[[int, int], None]) -> None:
    """Bridge stdin/stdout to the websocket at `url` until either side ends.

    `raw` asks for a raw local terminal (only honoured when stdin is one); then the remote
    terminal follows this one's size. Ctrl-C without a raw terminal ends the session (130).
    """
    stdin, stdout = binary_stdin(), binary_stdout()
    fd = _tty_fd(sys.stdin) if raw else None

    def send_size() -> None:
        size = _terminal_size(fd)
        if size is not None:
            try:
                resize(*size)
            except CliError:
                pass  # cosmetic: the session works at any size

    sock = connect_terminal(url)
    try:
        with _raw_terminal(fd), _on_resize(send_size if fd is not None else None):
            # Only now: the server starts an exec session when the socket opens, and
            # Docker holds a resize of an exec that has not started for ten seconds.
            if fd is not None:
                send_size()
            bridge(sock, stdin, stdout, send_input=send_input, raw=fd is not None)
    except KeyboardInterrupt:
        raise typer.Exit(INTERRUPTED) from None
    finally:
        sock.close()


def bridge(sock: Socket, stdin: IO[bytes], stdout: IO[bytes], send_input: bool, raw: bool) -> None:
    """Pump socket → stdout (and stdin → socket) until the socket ends or the user detaches.

    Both pumps are daemon threads; this thread only waits, so Ctrl-C and SIGWINCH reach
    it at once. Without a raw terminal the end of stdin becomes ^D for the remote TTY,
    repeated until the session ends.
    """
    done = threading.Event()

    def output() -> None:
        try:
            while True:
                data = sock.recv()
                if not data:
                    return
                stdout.write(data)
                stdout.flush()
        except (OSError, ValueError):
            return
        finally:
            done.set()

    def input_() -> None:
        held = b""  # a ^P waiting to see whether ^Q follows
        try:
            while not done.is_set():
                data = _read_chunk(stdin)
                if not data:
                    if not raw:
                        # No more input, ever: every read of the remote TTY should see
                        # its end, also when a ^D sent early was lost as the program
                        # switched the TTY's mode (a shell starting up), so repeat it.
                        sock.send(held + EOT)
                        while not done.wait(EOT_REPEAT):
                            sock.send(EOT)
                    return
                data, held = held + data, b""
                if raw:
                    at = data.find(DETACH)
                    if at >= 0:
                        if at:
                            sock.send(data[:at])
                        done.set()
                        return
                    if data.endswith(DETACH[:1]):
                        data, held = data[:-1], DETACH[:1]
                if data:
                    sock.send(data)
        except (OSError, ValueError, EOFError):
            return

    threading.Thread(target=output, name="terminal-output", daemon=True).start()
    if send_input:
        threading.Thread(target=input_, name="terminal-input", daemon=True).start()
    while not done.wait(0.1):
        pass


def _read_chunk(stream: IO[bytes]) -> bytes:
    """What is there now (up to CHUNK bytes): a keystroke on a raw terminal, a pipe's buffer."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        read1 = getattr(stream, "read1", None)
        return bytes(read1(CHUNK) if read1 is not None else stream.read(CHUNK))
    return os.read(fd, CHUNK)


def _tty_fd(stream: Any) -> int | None:
    try:
        fd = int(stream.fileno())
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None
    return fd if os.isatty(fd) else None


def _terminal_size(fd: int | None) -> tuple[int, int] | None:
    if fd is None:
        return None
    try:
        size = os.get_terminal_size(fd)
    except OSError:
        return None
    return size.columns, size.lines


@contextmanager
def _raw_terminal(fd: int | None) -> Iterator[None]:
    if fd is None:
        yield
        return
    import termios
    import tty
    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


@contextmanager
def _on_resize(callback: Callable[[], None] | None) -> Iterator[None]:
    """Call `callback` (off the signal handler, in a thread) whenever the terminal resizes."""
    winch = getattr(signal, "SIGWINCH", None)
    if callback is None or winch is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(winch, lambda *_: threading.Thread(target=callback, daemon=True).start())
    try:
        yield
    finally:
        signal.signal(winch, previous)
