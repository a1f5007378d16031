"""The run directory: its layout, whether a run may resume in it, its lock.

Run directory:
    config.json        resolved model/data/train configs
    tokenizer/         the tokenizer (BertTokenizerFast-loadable)
    checkpoints/       latest.keras, best.keras (+ best.json)
    backup/            step-level resume state (model + optimizer)
    metrics.csv        train rows every `log_every` steps, held-out rows
    logs/              TensorBoard
    loss.png           MLM/NSP loss and accuracy curves
    summary.json       steps, seconds, tokens/s, final metrics
    model.keras        the final pretrainer
    export/saved_model serving signatures (see kerasbert.serving.export)
"""

import contextlib
import json
import os
import shutil

from kerasbert.errors import UsageError
from kerasbert.files import pid_alive


def default_output_dir(model_cfg_size: str | None) -> str:
    return os.path.join("runs", model_cfg_size or "custom")


def _configs_dict(model_cfg, data_cfg, train_cfg):
    return {"model": model_cfg.to_dict(), "data": data_cfg.to_dict(),
            "train": train_cfg.to_dict()}


# Fields that may change between a run and its resume without making the
# backup meaningless (bookkeeping, not what is learned).
_RESUME_FREE = {"output_dir", "overwrite", "backup_every", "log_every",
                "eval_batches", "jit_compile", "cache_dir"}


def _same_run(saved: dict, current: dict) -> list[str]:
    diffs = []
    for part in ("model", "data", "train"):
        for key, value in current[part].items():
            if key in _RESUME_FREE:
                continue
            if saved.get(part, {}).get(key) != value:
                diffs.append(f"{key}: {saved.get(part, {}).get(key)!r} -> "
                             f"{value!r}")
    return diffs


def prepare_run_dir(output_dir, configs, overwrite) -> str:
    """Returns 'new', 'resume' or 'done', after checking the directory."""
    config_path = os.path.join(output_dir, "config.json")
    if overwrite and os.path.exists(output_dir):
        shutil.rmtree(output_dir)
    if not os.path.exists(config_path):
        if os.path.exists(output_dir) and os.listdir(output_dir):
            raise UsageError(
                f"--output-dir: {output_dir} exists and is not a kerasbert "
                "run directory (choose another or pass --overwrite)")
        return "new"
    with open(config_path, encoding="utf-8") as f:
        saved = json.load(f)
    diffs = _same_run(saved, configs)
    if diffs:
        raise UsageError(
            f"--output-dir: {output_dir} holds a run with another "
            f"configuration ({'; '.join(diffs[:3])}); pass --overwrite or "
            "another --output-dir")
    if os.path.exists(os.path.join(output_dir, "summary.json")):
        return "done"
    return "resume"


def _chief_by_tf_config() -> bool:
    try:
        tf_config = json.loads(os.environ.get("TF_CONFIG", "{}"))
    except json.JSONDecodeError:
        raise UsageError("TF_CONFIG: not valid JSON") from None
    task = tf_config.get("task", {})
    cluster = tf_config.get("cluster", {})
    if task.get("type") == "chief":
        return True
    return "chief" not in cluster and task.get("type", "worker") == "worker" \
        and int(task.get("index", 0)) == 0


@contextlib.contextmanager
def run_lock(output_dir: str):
    """One process per run directory: `<output_dir>.lock` holds its pid.

    Two runs writing the same checkpoints and metrics would corrupt both.
    A lock left by a killed process (its pid is gone) is taken over, so
    rerunning after a crash resumes as usual. Same-host processes only.
    """
    path = f"{os.path.abspath(output_dir).rstrip(os.sep)}.lock"
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
            if pid and pid_alive(pid):
                raise UsageError(
                    f"--output-dir: {output_dir} is in use by another run "
                    f"(pid {pid})") from None
            os.remove(path)  # stale: its process is gone
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        break
    try:
        yield
    finally:
        os.remove(path)
