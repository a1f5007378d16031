"""Atomic writes, checksums, process checks and fault points.

A kill (SIGKILL, power loss) must never leave half a file where a complete
one is expected: everything is written to a temp path beside the target
(same folder, so the same file system) and moved into place with one
`os.replace`, which is atomic on POSIX. Every writer in kerasbert goes
through `atomic_path` or `atomic_dir`.

`fault_point(name)` lets the tests kill a run at a named place (after a
backup, inside a checkpoint write, during evaluation...) by setting
`KERASBERT_FAULT=name` or `name:N` (the N-th time it is reached). Unset, it
costs one dictionary lookup.
"""

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket

from kerasbert.errors import UsageError

_TMP = re.compile(r"^\..+\.tmp(\d+)(\..*)?$")


def _tmp_name(path: str) -> str:
    head, tail = os.path.split(os.path.abspath(path))
    # The pid keeps two processes' temp files apart; the suffix is kept
    # because some writers (Keras, matplotlib) pick the format by it.
    stem, dot, ext = tail.partition(".")
    return os.path.join(head, f".{stem}.tmp{os.getpid()}{dot}{ext}")


@contextlib.contextmanager
def atomic_path(path: str):
    """Yields a temp path to write; on success it replaces `path`.

    On an exception the temp file is removed and `path` is untouched.
    """
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        yield tmp
        fault_point("atomic_write")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def atomic_dir(path: str):
    """Yields an empty temp folder; on success it replaces folder `path`
    (an old one is removed first, so a kill in between leaves no `path`
    rather than a mixed one). A regular file at `path` is an error."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"{path}: exists and is not a folder")
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = _tmp_name(path.rstrip(os.sep))
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        yield tmp
        fault_point("atomic_write")
        if os.path.isdir(path):
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def remove_stale_temps(folder: str) -> None:
    """Removes the temp files and folders that killed processes left in
    `folder` (and below): their pid is in the name."""
    for root, dirs, files in os.walk(folder):
        for name in [*dirs, *files]:
            match = _TMP.match(name)
            if match and not pid_alive(int(match.group(1))):
                path = os.path.join(root, name)
                if os.path.isdir(path):
                    shutil.rmtree(path, ignore_errors=True)
                    dirs.remove(name)
                else:
                    os.remove(path)


def remove_stale_scratch(parent: str, prefix: str) -> None:
    """Removes the `make_scratch_dir` folders of `prefix` in `parent` whose
    process, on this host, is gone. Another host's are left alone: its
    pids mean nothing here (a shared file system)."""
    mine = f"{prefix}-{socket.gethostname()}-"
    try:
        names = os.listdir(parent)
    except FileNotFoundError:
        return
    for name in names:
        pid = name[len(mine):].split("-")[0]
        if name.startswith(mine) and pid.isdigit() and \
                not pid_alive(int(pid)):
            path = os.path.join(parent, name)
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            else:  # e.g. a run lock beside a worker's folder
                with contextlib.suppress(OSError):
                    os.remove(path)


def make_scratch_dir(parent: str, prefix: str) -> str:
    """A new private folder `<prefix>-<host>-<pid>-<random>` in `parent`
    for work that is moved into place when complete, after removing the
    ones killed processes left (`remove_stale_scratch`)."""
    os.makedirs(parent, exist_ok=True)
    remove_stale_scratch(parent, prefix)
    path = os.path.join(parent, f"{prefix}-{socket.gethostname()}-"
                                f"{os.getpid()}-{secrets.token_hex(4)}")
    os.makedirs(path)
    return path


def write_text_atomic(path: str, text: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)


def write_json_atomic(path: str, value) -> None:
    """Writes `value` as indented, key-sorted JSON to `path` atomically."""
    write_text_atomic(path, json.dumps(value, indent=2, sort_keys=True)
                      + "\n")


def copy_atomic(src: str, dst: str) -> None:
    """`dst` becomes a copy of `src`: a hard link where the file system
    allows one (no bytes copied; replacing `src` later leaves `dst` as it
    was), else a byte copy."""
    with atomic_path(dst) as tmp:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_writable_dir(path: str, flag: str) -> None:
    """Fails early, in one line, if folder `path` cannot be created or
    written (a regular file there, a read-only or virtual file system)."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"{flag}: {path} exists and is not a folder")
    probe = path
    while not os.path.exists(probe):
        probe = os.path.dirname(os.path.abspath(probe))
    if not os.path.isdir(probe):
        raise UsageError(f"{flag}: {path}: {probe} is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"{flag}: {path}: {probe} is not writable")
    try:  # access() says yes on some read-only mounts (/proc): try it.
        test = os.path.join(probe, f".kerasbert-probe-{os.getpid()}")
        with open(test, "w"):
            pass
        os.remove(test)
    except OSError as e:
        raise UsageError(f"{flag}: {path}: cannot write in {probe} "
                         f"({e.strerror})") from None


def pid_alive(pid: int) -> bool:
    """True if a process with this pid exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_fault_hits: dict[str, int] = {}


def fault_point(name: str) -> None:
    """SIGKILLs this process at the place named by $KERASBERT_FAULT."""
    spec = os.environ.get("KERASBERT_FAULT")
    if not spec:
        return
    target, _, count = spec.partition(":")
    if target != name:
        return
    _fault_hits[name] = _fault_hits.get(name, 0) + 1
    if _fault_hits[name] == int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)
