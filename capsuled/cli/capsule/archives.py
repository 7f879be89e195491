"""`capsule container cp`: copy files and directories between a container and the local
machine (or stdin/stdout), as tar archives through the server's archive API."""

from __future__ import annotations

import io
import os
import posixpath
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from capsuled.cli.capsule.client import ApiError, CliError, ContainerClient
from capsuled.cli.capsule.container_common import (
    CapsuleOpt,
    binary_stdin,
    binary_stdout,
    container_client,
)
from capsuled.cli.capsule.output import Format, echo_data
from capsuled.cli.capsule.shared import UsageProblem, reporting, runtime_of

STDIO = "-"
GO_MODE_DIR = 1 << 31  # Docker's path stat has Go's os.FileMode bits


def split_location(arg: str) -> tuple[str | None, str]:
    """`CONTAINER:PATH` → (container, path); a local path → (None, path).

    As with docker cp, a path that starts with / or . is always local, so a local file
    whose name has a colon can be named ./like:this.
    """
    if arg == STDIO or arg.startswith(("/", ".", "~")):
        return None, arg
    ident, sep, path = arg.partition(":")
    if sep and ident:
        return ident, path
    return None, arg


def _remote_path(path: str) -> tuple[str, bool, bool]:
    """(absolute normalised path, copy its contents only (ends in /.), must be a directory)."""
    contents = path == "." or path.endswith("/.")
    must_dir = contents or path.endswith("/")
    return posixpath.normpath(posixpath.join("/", path)), contents, must_dir


def cp(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(metavar="SOURCE", show_default=False)],
    destination: Annotated[str, typer.Argument(metavar="DEST", show_default=False)],
    capsule: CapsuleOpt = None,
    output: Annotated[Format, typer.Option(
        "--output", "-o", "--format", case_sensitive=False,
        help="table: a line on stderr; json: {source, destination, bytes} on stdout.")] = Format.table,
) -> None:
    """Copy files and directories between a container and this machine.

    One of SOURCE and DEST is CONTAINER:PATH (a relative PATH starts at /), the other a
    local path, or - for a tar stream on stdin/stdout. As with docker cp: a file is
    copied into DEST if DEST is a directory, else to DEST itself; a directory is copied
    into DEST if DEST exists, else becomes DEST; a source ending in /. copies the
    directory's contents. Links are copied as links. Files copied in belong to root;
    files copied out to you.

    Example:

      capsule container cp ./site web:/www
      capsule container cp web:/var/log/app.log .
      capsule container cp web:/etc/. ./etc-copy
    """
    src_ctr, src_path = split_location(source)
    dst_ctr, dst_path = split_location(destination)
    if (src_ctr is None) == (dst_ctr is None):
        raise UsageProblem("exactly one of SOURCE and DEST must be CONTAINER:PATH "
                           "(start a local path with ./ if it contains a colon)", ctx=ctx)
    if src_path == STDIO and dst_path == STDIO:
        raise UsageProblem("SOURCE and DEST cannot both be -", ctx=ctx)
    rt = runtime_of(ctx)
    with reporting(rt), container_client(rt) as client:
        if src_ctr is not None:
            size = _copy_out(client, src_ctr, src_path, dst_path, capsule)
        else:
            assert dst_ctr is not None
            size = _copy_in(client, src_path, dst_ctr, dst_path, capsule)
    if dst_path == STDIO:
        return  # stdout holds the tar
    if output.machine:
        echo_data(output, {"source": source, "destination": destination, "bytes": size})
    else:
        typer.echo(f"copied {_size(size)} to {destination}", err=True)


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.3g}{unit}"
        value /= 1000
    return f"{n}B"


def _copy_out(client: ContainerClient, ident: str, path: str, dest: str, capsule: str | None) -> int:
    rpath, contents, must_dir = _remote_path(path)
    data, stat = client.get_archive(ident, rpath, capsule)
    if dest == STDIO:
        out = binary_stdout()
        out.write(data)
        out.flush()
        return len(data)
    is_dir = bool(int(stat.get("mode") or 0) & GO_MODE_DIR)
    if must_dir and not is_dir:
        raise CliError(f"{ident}:{path}: not a directory")
    name = str(stat.get("name") or posixpath.basename(rpath))
    local = Path(dest)
    if is_dir:
        if local.exists() and not local.is_dir():
            raise CliError(f"cannot copy a directory to a file: {dest}")
        into = local.is_dir() and not contents and name not in ("/", "")
        target = local / name if into else local
    elif local.is_dir():
        target = local / name
    elif dest.endswith(os.sep):
        raise CliError(f"{dest}: no such directory")
    else:
        target = local
    parent = target.parent
    if not parent.is_dir():
        raise CliError(f"{parent}: no such directory")
    try:
        with tempfile.TemporaryDirectory(dir=parent, prefix=".capsule-cp-") as tmp:
            _extract(data, tmp)
            top = Path(tmp) if name in ("/", "") else Path(tmp) / name
            if not (top.exists() or top.is_symlink()):
                raise CliError(f"the archive of {ident}:{path} does not hold {name}")
            if is_dir and (target.is_dir() or top == Path(tmp)):
                shutil.copytree(top, target, symlinks=True, dirs_exist_ok=True)
            else:
                os.replace(top, target)
    except OSError as exc:
        raise CliError(f"cannot write {target}: {exc.strerror or exc}") from None
    return len(data)


def _extract(data: bytes, dest: str) -> None:
    """Unpack a tar into `dest`; nothing may land outside it; files become the caller's."""
    try:
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            if hasattr(tarfile, "tar_filter"):
                tar.extractall(dest, filter=_as_caller)
                return
            for member in tar.getmembers():  # Python < 3.11.4: no extraction filters
                if member.name.startswith("/") or ".." in member.name.split("/"):
                    raise CliError(f"the archive holds {member.name!r}, outside its directory")
            tar.extractall(dest)
    except tarfile.TarError as exc:
        raise CliError(f"cannot unpack the archive: {exc}") from None


def _as_caller(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
    # The `tar` filter refuses paths outside `dest`; owner dropped: files copied out are ours.
    checked = tarfile.tar_filter(member, dest)
    return checked.replace(uid=None, gid=None, uname=None, gname=None, deep=False)  # type: ignore[arg-type]


def _copy_in(client: ContainerClient, src: str, ident: str, path: str, capsule: str | None) -> int:
    rpath, _, must_dir = _remote_path(path)
    uuid = str(client.get(ident, capsule)["uuid"])  # a clear 404 for the container itself
    if src == STDIO:
        data = binary_stdin().read()
        _put(client, uuid, ident, rpath, data)
        return len(data)
    local = Path(src)
    if not (local.exists() or local.is_symlink()):
        raise CliError(f"{src}: no such file or directory")
    is_dir = local.is_dir() and not local.is_symlink()
    contents = src == "." or src.endswith(("/.", os.sep + "."))
    if contents and not is_dir:
        raise CliError(f"{src}: not a directory")
    # 1. DEST is an existing directory: SRC (or its contents) goes into it.
    name = local.resolve().name if local.name in ("", ".", "..") else local.name
    data = _tar(local, None if contents else name)
    try:
        client.put_archive(uuid, rpath, data)
        return len(data)
    except ApiError as exc:
        first = exc
    missing = first.status == 404
    # Docker's "extraction point is not a directory" reaches us as a server error.
    not_dir = first.status >= 500
    if not (missing or not_dir) or rpath == "/":
        raise first
    if must_dir:
        raise CliError(f"{ident}:{path}: " + ("no such directory" if missing else
                                              f"not a directory ({first.title})"))
    if not_dir and is_dir:
        raise CliError(f"cannot copy a directory to {ident}:{path}: not a directory "
                       f"({first.title})")
    # 2. DEST does not exist (a copy of SRC is made under that name in its parent
    #    directory), or 3. DEST is a file, which a file replaces.
    parent, base = posixpath.split(rpath)
    data = _tar(local, base)
    try:
        _put(client, uuid, ident, parent, data)
    except ApiError:
        if not_dir:
            raise first from None
        raise
    return len(data)


def _put(client: ContainerClient, uuid: str, ident: str, directory: str, data: bytes) -> None:
    try:
        client.put_archive(uuid, directory, data)
    except ApiError as exc:
        if exc.status == 404:
            raise CliError(f"{ident}:{directory}: no such directory") from None
        raise


def _tar(local: Path, top: str | None) -> bytes:
    """`local` as a tar: under the name `top`, or (top None) its entries at the top level.
    Owners become root, as docker cp does without -a."""
    def as_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        return info

    buf = io.BytesIO()
    try:
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            if top is None:
                for child in sorted(local.iterdir()):
                    tar.add(child, arcname=child.name, filter=as_root)
            else:
                tar.add(local, arcname=top, filter=as_root)
    except OSError as exc:
        raise CliError(f"cannot read {exc.filename or local}: {exc.strerror or exc}") from None
    return buf.getvalue()
