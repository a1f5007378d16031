"""Atomic writes, checksums, process checks and fault points.

A kill (SIGKILL, power loss) must never leave half a file where a complete
one is expected: everything is written to a temp path beside the target
(same folder, so the same file system) and moved into place with one
`os.replace`, which is atomic on POSIX. Every writer in kerasbert goes
through `atomic_path` or `atomic_dir`.

`check_output` is the one rule every command applies to the paths it
writes (see docs/safety.md): never one that is, contains or lies inside an
input, and never an existing one without --overwrite. A replaced folder is
built beside the old one and swapped in when complete (`swap_in`); a new
output is moved in only if no other process wrote it meanwhile
(`move_new`).

`fault_point(name)` lets the tests kill a run at a named place (after a
backup, inside a checkpoint write, during evaluation...) by setting
`KERASBERT_FAULT=name` or `name:N` (the N-th time it is reached). Unset, it
costs one dictionary lookup.
"""

import contextlib
import ctypes
import ctypes.util
import errno
import functools
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import stat

from kerasbert.errors import DiskFull, UsageError

_TMP = re.compile(r"^\..+\.tmp(\d+)(\..*)?$")


def _tmp_name(path: str, kind: str = "tmp") -> str:
    head, tail = os.path.split(os.path.abspath(path))
    # The pid keeps two processes' temp files apart; the suffix is kept
    # because some writers (Keras, matplotlib) pick the format by it.
    stem, dot, ext = tail.partition(".")
    return os.path.join(head, f".{stem}.{kind}{os.getpid()}{dot}{ext}")


_FULL_SIGNS = ("No space left on device", "File too large")


def _disk_full(e: BaseException) -> bool:
    """ENOSPC, EDQUOT or EFBIG (a file-size limit, `ulimit -f`) as Python,
    h5py or TensorFlow report them (TF's ResourceExhaustedError is no
    OSError; its message is the only sign). A `DiskFull` from a nested
    writer already names its file."""
    if isinstance(e, DiskFull):
        return False
    return getattr(e, "errno", None) in (
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EFBIG,
    ) or any(sign in str(e) for sign in _FULL_SIGNS)


def _names(e: BaseException, tmp: str) -> bool:
    """A `DiskFull` of a writer nested in ours, naming our temp path: the
    user knows `path`, not that."""
    return isinstance(e, DiskFull) and str(e).startswith(tmp)


def disk_full_error(path: str, e: BaseException | None = None) -> DiskFull:
    """The one-line error for a full disk (or a file-size limit, when `e`
    says so) while writing `path`."""
    if e is not None and (
        getattr(e, "errno", None) == errno.EFBIG
        or "file too large" in str(e).lower()
    ):
        return DiskFull(
            f"{path}: file too large for this process's file-size limit "
            "(ulimit -f); raise the limit and run again"
        )
    parent = os.path.dirname(os.path.abspath(path))
    while parent and not os.path.isdir(parent):
        parent = os.path.dirname(parent)
    free = shutil.disk_usage(parent).free if parent else 0
    return DiskFull(
        f"{path}: no space left on device ({free / 1e6:.0f} "
        "MB free there); free some space and run again"
    )


def folder_bytes(path: str) -> int:
    """The bytes of the files under folder `path` (0 if there is none)."""
    total = 0
    for root, _, names in os.walk(path):
        for name in names:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def check_free_space(path: str, needed: int, flag: str) -> None:
    """Refuses to start a write of about `needed` bytes under `path` when
    its file system has less free: better than failing half way. What
    folder `path` holds already counts as written (a resumed run replaces
    its checkpoints, it does not add to them)."""
    probe = os.path.abspath(path)
    while not os.path.isdir(probe):
        probe = os.path.dirname(probe)
    free = shutil.disk_usage(probe).free
    needed -= folder_bytes(path)
    if free < needed:
        raise UsageError(
            f"{flag}: {path}: about {needed / 1e6:.0f} MB "
            f"needed, {free / 1e6:.0f} MB free there"
        )


@contextlib.contextmanager
def atomic_path(path: str, replace: bool = True):
    """Yields a temp path to write; on success it replaces `path`.

    On an exception the temp file is removed and `path` is untouched; a
    full disk is a `UsageError` naming `path`. With `replace` False a
    `path` that appeared meanwhile (another process) is kept and
    `FileExistsError` raised (`move_new`).
    """
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    remove_stale_siblings(path)
    tmp = _tmp_name(path)
    try:
        yield tmp
        fault_point("atomic_write")
        if replace:
            os.replace(tmp, path)
        else:
            move_new(tmp, path)
    except Exception as e:
        if _disk_full(e) or _names(e, tmp):
            raise disk_full_error(path, e) from None
        raise
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def atomic_dir(path: str, replace: bool = True):
    """Yields an empty temp folder beside `path`; on success it replaces
    folder `path` (`swap_in`), so `path` is the old folder or the complete
    new one, never a mix. A regular file at `path` is an error. Temp
    folders of `path` that killed processes left are removed first. With
    `replace` False a `path` that appeared meanwhile is kept and
    `FileExistsError` raised (`move_new`)."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"{path}: exists and is not a folder")
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    path = path.rstrip(os.sep)
    remove_stale_siblings(path)
    tmp = _tmp_name(path)
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        yield tmp
        fault_point("atomic_write")
        if replace:
            swap_in(tmp, path)
        else:
            move_new(tmp, path)
    except Exception as e:
        if _disk_full(e) or _names(e, tmp):
            raise disk_full_error(path, e) from None
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def swap_in(new: str, path: str) -> None:
    """Folder `new` becomes `path`. An old `path` is renamed aside first
    and removed after: a kill in between leaves it whole under its aside
    name, and `remove_stale_siblings` puts it back."""
    aside = _tmp_name(path, "old")
    if os.path.lexists(path):
        os.replace(path, aside)
    fault_point("swap_in")
    os.replace(new, path)
    if os.path.isdir(aside) and not os.path.islink(aside):
        shutil.rmtree(aside)
    elif os.path.lexists(aside):
        os.remove(aside)


@functools.cache
def _renameat2():
    """glibc's renameat2 (Linux 3.15+), or None."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        function = libc.renameat2
    except (OSError, AttributeError, TypeError):
        return None
    function.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    return function


_RENAME_NOREPLACE = 1
_AT_FDCWD = -100


class Exists(FileExistsError):
    """`move_new`: the path appeared while it was being written."""


def exists_error(path: str, flag: str) -> UsageError:
    """The one-line error for an existing output without --overwrite."""
    return UsageError(f"{flag}: {path} exists (pass --overwrite to replace it)")


def move_new(new: str, path: str) -> None:
    """Renames `new` to `path` unless `path` exists, in one step where the
    system allows (renameat2's RENAME_NOREPLACE): of two processes that
    both checked that `path` was free, the second gets `FileExistsError`
    instead of silently replacing the first one's output."""
    function = _renameat2()
    if function is not None:
        done = function(
            _AT_FDCWD,
            os.fsencode(new),
            _AT_FDCWD,
            os.fsencode(path),
            _RENAME_NOREPLACE,
        )
        if done == 0:
            return
        code = ctypes.get_errno()
        if code in (errno.EEXIST, errno.ENOTEMPTY):
            raise Exists(code, os.strerror(code), path)
        if code not in (errno.EINVAL, errno.ENOSYS, errno.EPERM):
            raise OSError(code, os.strerror(code), path)
    # No atomic way here (another system, or a file system without it).
    if os.path.lexists(path):
        raise Exists(errno.EEXIST, os.strerror(errno.EEXIST), path)
    os.rename(new, path)


def restore_swapped_out(path: str) -> None:
    """Puts back an old `path` that a kill between the two renames of
    `swap_in` left aside as `.NAME.oldPID` (its process gone), so that no
    check sees `path` missing while the user's output is only hidden."""
    head, tail = os.path.split(os.path.abspath(path).rstrip(os.sep))
    stem, dot, ext = tail.partition(".")
    pattern = re.compile(
        rf"^\.{re.escape(stem)}\.old(\d+){re.escape(dot + ext)}$"
    )
    try:
        names = sorted(os.listdir(head))
    except OSError:
        return
    for name in names:
        match = pattern.match(name)
        if (
            match
            and not pid_alive(int(match.group(1)))
            and not os.path.lexists(os.path.join(head, tail))
        ):
            os.replace(os.path.join(head, name), os.path.join(head, tail))


def remove_stale_siblings(path: str) -> None:
    """Removes the temp files and folders of `path` (`.NAME.tmpPID...`)
    that killed processes left beside it, and puts back an old `path`
    that a kill inside `swap_in` left aside."""
    head, tail = os.path.split(os.path.abspath(path))
    stem, dot, ext = tail.partition(".")
    pattern = re.compile(
        rf"^\.{re.escape(stem)}\.(tmp|old)(\d+)"
        rf"{re.escape(dot + ext)}$"
    )
    try:
        names = os.listdir(head)
    except OSError:
        return
    restore_swapped_out(path)  # the kill came between the renames
    for name in sorted(names):
        match = pattern.match(name)
        stale = os.path.join(head, name)
        if (
            not match
            or pid_alive(int(match.group(2)))
            or not os.path.lexists(stale)
        ):
            continue
        if os.path.isdir(stale) and not os.path.islink(stale):
            shutil.rmtree(stale, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.remove(stale)


def replacement_dir(path: str) -> str:
    """Where a run that replaces folder `path` (--overwrite) is built,
    beside it, before `swap_in`: a fixed name, so the same command after
    a kill resumes it."""
    head, tail = os.path.split(os.path.abspath(path).rstrip(os.sep))
    return os.path.join(head, f".{tail}.replacing")


def _inside(inner: str, outer: str) -> bool:
    return inner != outer and os.path.commonpath([inner, outer]) == outer


def check_output(
    output: str, flag: str, inputs: dict, overwrite: bool | None = None
) -> None:
    """The rule for every path a command writes, checked before anything
    is touched.

    `output` must not be, contain or lie inside any of `inputs` ({flag:
    path or None}): replacing it would delete what is about to be read.
    Paths are compared resolved (symlinks, `..`), so an alias is caught.
    With `overwrite` False an existing `output` is refused; None leaves
    that to the caller (a run directory that resumes). An old `output`
    that a kill inside `swap_in` left aside is put back first, and temp
    copies that killed writers left are removed (`remove_stale_siblings`).
    """
    # What killed writers left: an old output hidden by a kill inside
    # the swap is put back, their temp copies go.
    remove_stale_siblings(output)
    out = os.path.realpath(output)
    for name, path in inputs.items():
        if not path or not os.path.lexists(path):
            continue
        src = os.path.realpath(path)
        if out == src:
            what = "is"
        elif _inside(src, out):
            what = "contains"
        elif _inside(out, src):
            what = "lies inside"
        else:
            continue
        alias = (
            ""
            if os.path.abspath(output) == out and os.path.abspath(path) == src
            else " (resolved)"
        )
        raise UsageError(
            f"{flag}: {output} {what} the input {name} {path}"
            f"{alias}; choose another {flag}"
        )
    if overwrite is False and os.path.lexists(output):
        raise exists_error(output, flag)


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


def stale_temp(name: str) -> bool:
    """Whether file name `name` is a temp file or folder of a killed
    process (`.NAME.tmpPID...`, that pid gone)."""
    match = _TMP.match(name)
    return bool(match) and not pid_alive(int(match.group(1)))


def only_stale_temps(folder: str) -> bool:
    """True if folder `folder` holds nothing but `stale_temp`s (a run
    killed in its very first write): it is as good as empty."""
    return all(stale_temp(name) for name in os.listdir(folder))


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
        pid = name[len(mine) :].split("-")[0]
        if name.startswith(mine) and pid.isdigit() and not pid_alive(int(pid)):
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
    path = os.path.join(
        parent,
        f"{prefix}-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}",
    )
    os.makedirs(path)
    return path


def write_text_atomic(path: str, text: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)


def write_json_atomic(path: str, value) -> None:
    """Writes `value` as indented, key-sorted JSON to `path` atomically."""
    write_text_atomic(path, json.dumps(value, indent=2, sort_keys=True) + "\n")


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
        raise UsageError(
            f"{flag}: {path}: cannot write in {probe} ({e.strerror})"
        ) from None


# What one file of an untrusted folder may hold when read whole: far above
# any real config, vocabulary or tokenizer.json (bert-base-multilingual's
# is 2 MB), far below what would exhaust memory. JSON nests at most
# `JSON_DEPTH` deep (a Keras model config: about 20).
READ_LIMIT = 256 << 20
JSON_DEPTH = 100


def check_regular(path: str, label: str) -> None:
    """Refuses `path` unless it is a regular file (or a link to one): a
    FIFO blocks a reader forever, /dev/zero never ends."""

    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise UsageError(f"{label}: no such file") from None
    except OSError as e:  # a symlink loop, a permission...
        raise UsageError(f"{label}: cannot be read ({e.strerror})") from None
    if stat.S_ISDIR(mode):
        raise UsageError(f"{label}: is a directory, not a file")
    if not stat.S_ISREG(mode):
        raise UsageError(f"{label}: not a regular file (a FIFO or device)")


def read_bytes(path: str, label: str, limit: int = READ_LIMIT) -> bytes:
    """The bytes of regular file `path`, at most `limit` of them; anything
    else is a `UsageError(label: ...)`. Opened without blocking, so a FIFO
    put there after the check is refused too."""

    check_regular(path, label)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        raise UsageError(f"{label}: cannot be read ({e.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise UsageError(f"{label}: not a regular file (a FIFO or device)")
        if info.st_size > limit:
            raise UsageError(
                f"{label}: {info.st_size / 1e6:,.0f} MB, more than the "
                f"{limit / 1e6:,.0f} MB such a file may hold"
            )
        data = f.read(limit + 1)
    if len(data) > limit:
        raise UsageError(f"{label}: more than {limit / 1e6:,.0f} MB")
    return data


def read_text(path: str, label: str, limit: int = READ_LIMIT) -> str:
    """`read_bytes` decoded as UTF-8 (a leading BOM dropped)."""
    data = read_bytes(path, label, limit)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UsageError(f"{label}: not UTF-8 at byte {e.start}") from None


def read_lines(path: str, label: str) -> list[str]:
    """The lines of UTF-8 text file `path` (`read_text`) without their
    ends (\\n, \\r\\n or \\r), trailing empty lines dropped: a vocab.txt."""
    text = read_text(path, label)
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    while lines and not lines[-1]:
        lines.pop()
    return lines


def _no_constant(name: str):
    """Python's json reads NaN and Infinity, which JSON has not: an
    untrusted config would carry them into weights and files."""
    raise ValueError(f"{name} is no JSON number")


def parse_json(text, label: str, constants: bool = False):
    """JSON `text` (str or bytes) nested at most `JSON_DEPTH` deep, without
    NaN/Infinity unless `constants`; else `UsageError(label: ...)`."""
    try:
        value = json.loads(
            text, parse_constant=float if constants else _no_constant
        )
    except RecursionError:
        value = None
        depth = JSON_DEPTH + 1
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError too
        raise UsageError(f"{label}: not valid JSON ({e})") from None
    else:
        depth = json_depth(value)
    if depth > JSON_DEPTH:
        raise UsageError(
            f"{label}: JSON nested more than {JSON_DEPTH} levels deep"
        )
    return value


def json_depth(value) -> int:
    """How deep lists and objects nest in `value` (no recursion)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = item.values()
        elif not isinstance(item, list):
            continue
        deepest = max(deepest, depth)
        if depth <= JSON_DEPTH:
            stack.extend((child, depth + 1) for child in item)
    return deepest


def read_json(path: str, label: str, constants: bool = False):
    """The JSON value of untrusted file `path` (`read_bytes`, `parse_json`)."""
    return parse_json(read_bytes(path, label), label, constants)


def inside_folder(folder: str, name, label: str) -> str:
    """`folder`/`name` for a file name read from a file of `folder` (an
    index's shard, a tokenizer's model file): a relative path that stays
    inside `folder`. Judged by the name (a link inside the folder may
    point elsewhere, as the Hugging Face cache's snapshots do)."""
    if not isinstance(name, str) or not name:
        raise UsageError(f"{label}: file name {name!r} is not a string")
    parts = os.path.normpath(name).split(os.sep)
    if os.path.isabs(name) or ".." in parts:
        raise UsageError(f"{label}: {name!r} lies outside the folder {folder}")
    return os.path.join(folder, name)


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
