"""The run directory: every path in it, whether a run may resume, its lock.

Every task's run (see trainer.py) writes:

    config.json          the resolved configs, one section each
    tokenizer/           the tokenizer (BertTokenizerFast-loadable)
    checkpoints/         latest.keras, best.keras (+ best.json)
    backup/step-N/       resume state (see callbacks.StepBackup), last two
    metrics.csv          train rows every `log_every` steps, validation rows
                         each epoch (callbacks.csv_columns)
    logs/                TensorBoard
    model.keras          the final model
    SUMMARY              the task's summary; written last, it marks the run
                         complete

and its task's own part: pretraining (training/pretrain.py) `summary.json`
as SUMMARY, `loss.png`, `export/saved_model/`; classification
(training/finetune.py) `metrics.json` as SUMMARY, `confusion.png`, and no
checkpoints/ or backup/ once complete.

Nothing else in kerasbert spells the common names out: use `RunDir`.
"""

import contextlib
import dataclasses
import json
import os
import shutil

from kerasbert.config import (
    AdaptConfig,
    DataConfig,
    FinetuneConfig,
    ModelConfig,
    TrainConfig,
)
from kerasbert.errors import UsageError
from kerasbert.files import (
    check_writable_dir,
    only_stale_temps,
    pid_alive,
    remove_stale_temps,
    replacement_dir,
    swap_in,
    write_json_atomic,
)

# Fields that may change between a run and its resume without making the
# backup meaningless (bookkeeping, not what is learned).
RESUME_FREE = frozenset(
    {
        "output_dir",
        "overwrite",
        "backup_every",
        "log_every",
        "eval_batches",
        "final_eval_batches",
        "jit_compile",
        "cache_dir",
    }
)


class RunDir:
    """The common paths of a run directory at `path`; `summary`: the file
    name of the task's summary (see the module docstring)."""

    def __init__(self, path: str, summary: str = "summary.json"):
        self.path = path
        join = lambda *p: os.path.join(path, *p)  # noqa: E731
        self.config = join("config.json")
        self.tokenizer = join("tokenizer")
        self.checkpoints = join("checkpoints")
        self.latest = join("checkpoints", "latest.keras")
        self.best = join("checkpoints", "best.keras")
        self.best_record = join("checkpoints", "best.json")
        self.backup = join("backup")
        self.metrics = join("metrics.csv")
        self.logs = join("logs")
        self.summary = join(summary)
        self.model = join("model.keras")

    def join(self, *parts) -> str:
        """A task's own file in the run directory."""
        return os.path.join(self.path, *parts)

    def state(self, configs: dict, overwrite: bool) -> str:
        """'new', 'resume' or 'done'; refuses a directory it must not touch.

        Only reads: nothing is created or removed here (see `prepare`).
        """
        check_writable_dir(self.path, "--output-dir")
        if overwrite or not os.path.exists(self.config):
            if (
                not overwrite
                and os.path.isdir(self.path)
                and not only_stale_temps(self.path)
            ):
                raise UsageError(
                    f"--output-dir: {self.path} exists and is not a kerasbert "
                    "run directory (choose another or pass --overwrite)"
                )
            return "new"
        saved = read_run_config(self.config, list(configs))
        diffs = config_changes(saved, configs)
        if diffs:
            raise UsageError(
                f"--output-dir: {self.path} holds a run with another "
                f"configuration ({'; '.join(diffs[:3])}); pass --overwrite or "
                "another --output-dir"
            )
        return "done" if os.path.exists(self.summary) else "resume"

    def prepare(self, configs: dict, overwrite: bool) -> None:
        """Creates (or, with `overwrite`, empties) the directory and writes
        config.json. Called once every check has passed."""
        if overwrite and os.path.isdir(self.path):
            shutil.rmtree(self.path)
        os.makedirs(self.path, exist_ok=True)
        remove_stale_temps(self.path)  # what a killed run was writing
        write_json_atomic(self.config, configs)


def open_run(run: RunDir, configs: dict, overwrite: bool, log=print):
    """(state, run to write, run to swap it into or None).

    `--overwrite` of an existing run builds the new one beside it, in
    `.NAME.replacing/`, swapped in (`files.swap_in`) when complete: the old
    run stays whole until then, and the same command after a kill resumes
    the replacement. A replacement that completed but was not yet swapped
    in is swapped here ('done'). One that a command without --overwrite
    finds was abandoned for the old run: it is removed, and said so.
    """
    state = run.state(configs, overwrite)
    if not (overwrite and os.path.isdir(run.path) and os.listdir(run.path)):
        abandoned = replacement_dir(run.path)
        if not overwrite and os.path.isdir(abandoned):
            log(
                f"note: removed {abandoned}, the unfinished replacement of "
                "an earlier --overwrite run (this command has no "
                "--overwrite)"
            )
            shutil.rmtree(abandoned)
        return state, run, None
    final = run
    run = RunDir(replacement_dir(final.path), os.path.basename(final.summary))
    try:
        state = run.state(configs, overwrite=False)
    except UsageError:  # another run's replacement, or damaged
        state = "new"
    if state == "new":
        shutil.rmtree(run.path, ignore_errors=True)
    elif state == "done":
        swap_in(run.path, final.path)
        return "done", final, None
    return state, run, final


def run_config(model_cfg, data_cfg, train_cfg) -> dict:
    """What config.json holds: the resolved configs, one section each."""
    return {
        "model": model_cfg.to_dict(),
        "data": data_cfg.to_dict(),
        "train": train_cfg.to_dict(),
    }


def read_run_config(path: str, parts=("model", "data", "train")) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
    except (OSError, ValueError) as e:
        raise UsageError(
            f"{path}: damaged run configuration ({e}); pass "
            "--overwrite to start the run afresh"
        ) from None
    if not isinstance(saved, dict) or not all(k in saved for k in parts):
        raise UsageError(
            f"{path}: not a kerasbert run configuration of this kind; pass "
            "--overwrite to start the run afresh"
        )
    return saved


# The config class of each config.json section: a run saved before one of
# its fields existed used that field's legacy value (`LEGACY`), else its
# default -- what the code did before the field.
_SECTIONS = {
    "model": ModelConfig,
    "data": DataConfig,
    "train": TrainConfig,
    "finetune": FinetuneConfig,
    "adapt": AdaptConfig,
}


# Fields through which a run starts from another run (adapt's `adapted`
# from `heads`, its classifier from `adapted`): a sibling of the run moves
# with it.
RUN_LINKS = frozenset({"init_from", "model"})


def _folder_of(configs: dict) -> str | None:
    """The folder that holds the run of `configs` (its output_dir's
    parent), or None."""
    for part in ("train", "finetune"):
        path = (configs.get(part) or {}).get("output_dir")
        if isinstance(path, str):
            return os.path.dirname(os.path.abspath(path.rstrip(os.sep)))
    return None


def _moved(value, old: str | None, new: str | None):
    """`value` with folder `old` spelled `new`, if it is a path inside
    `old`: a run's siblings (adapt's stages) move with it."""
    if not (isinstance(value, str) and old and new and old != new):
        return value
    path = os.path.abspath(value)
    if os.path.commonpath([path, old]) != old:
        return value
    return os.path.join(new, os.path.relpath(path, old))


def config_changes(saved: dict, current: dict) -> list[str]:
    """Differences that make a backup meaningless (RESUME_FREE aside).

    A `RUN_LINKS` path inside the folder that held the saved run is also
    compared as if it had moved with the run (a copied or moved adapt
    folder, whose `adapted` stage starts from its `heads` sibling)."""
    was, now = _folder_of(saved), _folder_of(current)
    diffs = []
    for part, value in current.items():
        cls = _SECTIONS.get(part)
        if cls is None or not isinstance(value, dict):
            if saved.get(part) != value:  # e.g. classification's labels
                diffs.append(f"{part}: {saved.get(part)!r} -> {value!r}")
            continue
        old = {
            **{f.name: f.default for f in dataclasses.fields(cls)},
            **getattr(cls, "LEGACY", {}),
            **(saved.get(part) or {}),
        }
        for key, new in value.items():
            same = [old.get(key)]
            if key in RUN_LINKS:
                same.append(_moved(old.get(key), was, now))
            if key not in RESUME_FREE and new not in same:
                diffs.append(f"{key}: {old.get(key)!r} -> {new!r}")
    return diffs


def default_output_dir(size: str | None) -> str:
    return os.path.join("runs", size or "custom")


def chief_by_tf_config() -> bool:
    """Whether this process is the chief of a multi-worker cluster, read
    from TF_CONFIG before TensorFlow starts (only the chief writes)."""
    try:
        tf_config = json.loads(os.environ.get("TF_CONFIG", "{}"))
    except json.JSONDecodeError:
        raise UsageError("TF_CONFIG: not valid JSON") from None
    task = tf_config.get("task", {})
    cluster = tf_config.get("cluster", {})
    if task.get("type") == "chief":
        return True
    return (
        "chief" not in cluster
        and task.get("type", "worker") == "worker"
        and int(task.get("index", 0)) == 0
    )


@contextlib.contextmanager
def run_lock(output_dir: str):
    """One process per run directory: `<output_dir>.lock` holds its pid.

    Two runs writing the same checkpoints and metrics would corrupt both.
    The lock is keyed on the resolved path, so a symlink or `a/../b` to the
    same directory finds it. A lock left by a killed process (its pid is
    gone) is taken over, so rerunning after a crash resumes as usual.
    Same-host processes only.
    """
    real = os.path.realpath(output_dir).rstrip(os.sep)
    path = f"{real}.lock"
    check_writable_dir(os.path.dirname(path), "--output-dir")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                with open(path, encoding="utf-8") as f:
                    pid = int(f.read().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and pid != os.getpid() and pid_alive(pid):
                raise UsageError(
                    f"--output-dir: {output_dir} is in use by another run "
                    f"(pid {pid})"
                ) from None
            os.remove(path)  # stale: its process is gone
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        break
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
