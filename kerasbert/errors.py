"""One error type for bad user input, and the CLI wrapper that reports it.

Library code raises `UsageError` with a message that names the file or flag
and the problem. Command-line entry points run under `run_cli`, which prints
that message as one line on stderr and exits with code 2 -- no traceback.
"""

import argparse
import os
import sys


class UsageError(ValueError):
    """Bad input from the user (a path, a flag, a corpus, a vocabulary)."""


class DiskFull(UsageError):
    """A write failed for want of space; the message names the path."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf; the last good checkpoint is kept.

    One policy for every command: one line naming the command's own
    learning-rate flag (`flag`; adapt sets its stage's), exit code 1 (the
    input was fine; the run failed)."""

    def __init__(self, message: str, flag: str = "--learning-rate"):
        super().__init__(message)
        self.message = message
        self.flag = flag

    def __str__(self):
        return f"{self.message}; try a lower {self.flag}"


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are `UsageError`s: one line and exit 2 under
    `run_cli`, instead of argparse's usage block."""

    def error(self, message):
        raise UsageError(message)


def run_cli(main, argv=None):
    """Runs `main(argv)`; a `UsageError` becomes one line and exit code 2.

    After a full disk a command run as `python -m` (`argv` None) exits at
    once: an h5py file whose writes failed stays open inside HDF5, and
    closing it at interpreter exit prints tracebacks, then segfaults."""
    try:
        return main(argv)
    except DiskFull as e:
        print(f"error: {e}", file=sys.stderr)
        if argv is None:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(2)
        sys.exit(2)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
