"""Atomic file writes and process checks, used wherever we write results.

A kill (SIGKILL, power loss) must never leave half a file where a complete
one is expected: everything is written to a temp path beside the target and
moved into place with one `os.replace`, which is atomic on POSIX.
"""

import json
import os


def write_json_atomic(path, value):
    """Writes `value` as indented JSON to `path` via a temp file."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def pid_alive(pid):
    """True if a process with this pid exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
