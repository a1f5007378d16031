import os
import socket
import subprocess
import sys

from kerasbert.files import make_scratch_dir


def dead_pid():
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    return done.pid


def test_scratch_dirs_of_killed_processes_go_others_stay(tmp_path):
    host = socket.gethostname()
    dead = dead_pid()
    stale = tmp_path / f"work-{host}-{dead}-0123abcd"
    (stale / "inside").mkdir(parents=True)
    stale_lock = tmp_path / f"work-{host}-{dead}-0123abcd.lock"
    stale_lock.write_text(str(dead))
    live = tmp_path / f"work-{host}-{os.getpid()}-89abcdef"
    elsewhere = tmp_path / f"work-other.host-{dead}-0123abcd"
    other_prefix = tmp_path / f"keep-{host}-{dead}-0123abcd"
    for path in (live, elsewhere, other_prefix):
        path.mkdir()
    made = make_scratch_dir(str(tmp_path), "work")
    assert os.path.isdir(made) and not os.listdir(made)
    assert os.path.basename(made).startswith(f"work-{host}-{os.getpid()}-")
    assert sorted(os.listdir(tmp_path)) == sorted(
        os.path.basename(p) for p in (made, live, elsewhere, other_prefix)
    )
    assert make_scratch_dir(str(tmp_path), "work") != made
