"""End-to-end runs of `python -m kerasbert.fit` and the tools around it.

Each test runs the real CLI in a subprocess on the bundled corpus, shortened
by flags (tiny model, short sequences, a few steps). The token cache is shared
through KERASBERT_CACHE so the corpus is tokenized once per session.
"""

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

pytestmark = pytest.mark.integration

SHORT = [
    "--sequence-length",
    "32",
    "--batch-size",
    "8",
    "--vocab-size",
    "2000",
    "--max-predictions",
    "5",
    "--eval-batches",
    "2",
    "--quiet",
]


@pytest.fixture(scope="session")
def env(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    e = dict(
        os.environ,
        KERASBERT_CACHE=str(cache),
        TF_CPP_MIN_LOG_LEVEL="2",
        KERAS_BACKEND="tensorflow",
        PYTHONUNBUFFERED="1",
    )
    e.pop("TF_CONFIG", None)
    return e


def fit(args, env, cwd=None, timeout=600, check=True):
    cmd = [sys.executable, "-m", "kerasbert.fit", *args]
    out = subprocess.run(
        cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    if check and out.returncode != 0:
        raise AssertionError(
            f"{cmd} failed ({out.returncode}):\n"
            f"{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
        )
    return out


def read_rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="session")
def default_run(tmp_path_factory, env):
    """The no-flag default (tiny, bundled corpus), shortened by flags."""
    run_dir = tmp_path_factory.mktemp("default") / "run"
    args = [
        "--max-steps",
        "6",
        "--steps-per-epoch",
        "3",
        "--log-every",
        "1",
        "--backup-every",
        "2",
        "--output-dir",
        str(run_dir),
        *SHORT,
    ]
    out = fit(args, env)
    return run_dir, args, out


def test_default_run_writes_every_file(default_run):
    run_dir, _, out = default_run
    for name in [
        "config.json",
        "tokenizer",
        "checkpoints/latest.keras",
        "checkpoints/best.keras",
        "backup/step-6/meta.json",
        "metrics.csv",
        "logs",
        "loss.png",
        "summary.json",
        "export/saved_model/saved_model.pb",
        "model.keras",
    ]:
        assert (run_dir / name).exists(), name
    assert any(
        p.name.startswith("events.out.tfevents")
        for p in (run_dir / "logs").rglob("*")
    )
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 6
    assert summary["tokens_per_second"] > 0
    for key in [
        "train_mlm_accuracy",
        "heldout_mlm_accuracy",
        "heldout_nsp_accuracy",
        "heldout_mlm_perplexity",
    ]:
        assert summary[key] is not None and np.isfinite(summary[key]), key
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model"]["num_layers"] == 2  # tiny
    assert config["model"]["hidden_dim"] == 128
    rows = read_rows(run_dir / "metrics.csv")
    assert [int(r["step"]) for r in rows if r["split"] == "train"] == [
        1,
        2,
        3,
        4,
        5,
        6,
    ]
    # Held-out rows at the end of both epochs (the last is the run's end).
    assert [int(r["step"]) for r in rows if r["split"] == "heldout"] == [3, 6]
    assert "precision:" in out.stdout
    # --mlm-bias-init unigram (the default) was applied: the MLM output
    # bias holds log token frequencies (several nats apart), not zeros.
    import keras

    import kerasbert.modeling  # noqa: F401
    from kerasbert.text.tokenizer import Tokenizer

    model = keras.saving.load_model(
        str(run_dir / "model.keras"), safe_mode=True
    )
    bias = np.asarray(model.mlm_head.output_bias, "float64")
    corpus = os.path.join(
        os.path.dirname(kerasbert.modeling.__file__),
        "..",
        "corpus_data",
        "wiki.valid.raw",
    )
    with open(corpus, encoding="utf-8") as f:
        ids = Tokenizer.load(str(run_dir / "tokenizer")).encode_batch(
            [line for line in f if line.strip()]
        )
    counts = np.bincount(np.concatenate(ids), minlength=len(bias))
    seen = counts > 0
    assert bias.std() > 1.0
    assert np.corrcoef(bias[seen], np.log(counts[seen]))[0, 1] > 0.9


def test_tokenizer_in_run_dir_loads_in_transformers(default_run):
    from transformers import BertTokenizerFast

    from kerasbert.text.tokenizer import Tokenizer

    run_dir, _, _ = default_run
    ours = Tokenizer.load(str(run_dir / "tokenizer"))
    hf = BertTokenizerFast.from_pretrained(str(run_dir / "tokenizer"))
    text = "The game was released in Japan in 2011 ."
    assert hf(text, add_special_tokens=False)["input_ids"] == ours.encode(text)
    assert len(hf) == ours.vocabulary_size


def test_saved_model_matches_keras_model(default_run):
    import keras
    import tensorflow as tf

    import kerasbert.modeling  # noqa: F401
    from kerasbert.serving.export import float32_copy

    run_dir, _, _ = default_run
    trained = keras.saving.load_model(
        str(run_dir / "model.keras"), safe_mode=True
    )
    # Whatever precision this CPU chose, the run recorded it in its model.
    summary = json.loads((run_dir / "summary.json").read_text())
    assert trained.backbone.dtype_policy.name == summary["precision"]
    model = float32_copy(trained)  # the export serves in float32
    rng = np.random.default_rng(0)
    x = {
        "token_ids": rng.integers(5, 2000, (3, 32)).astype("int32"),
        "segment_ids": np.repeat([[0] * 16 + [1] * 16], 3, 0).astype("int32"),
        "padding_mask": np.ones((3, 32), "int32"),
        "mask_positions": np.array([[1, 4, 9, 0, 0]] * 3, "int32"),
    }
    x["padding_mask"][1, 20:] = 0
    expected = model(x, training=False)
    backbone = model.backbone(
        {k: x[k] for k in ("token_ids", "segment_ids", "padding_mask")},
        training=False,
    )
    loaded = tf.saved_model.load(str(run_dir / "export" / "saved_model"))
    got = loaded.signatures["serving_default"](
        **{k: tf.constant(v) for k, v in x.items()}
    )
    for key, want in [
        ("mlm_logits", expected["mlm_logits"]),
        ("nsp_logits", expected["nsp_logits"]),
        ("sequence_output", backbone["sequence_output"]),
        ("pooled_output", backbone["pooled_output"]),
    ]:
        np.testing.assert_allclose(
            got[key].numpy(),
            np.asarray(want, "float32"),
            atol=1e-5,
            err_msg=key,
        )
    enc = loaded.signatures["encode"](
        **{
            k: tf.constant(x[k])
            for k in ("token_ids", "segment_ids", "padding_mask")
        }
    )
    np.testing.assert_allclose(
        enc["pooled_output"].numpy(), got["pooled_output"].numpy(), atol=1e-6
    )


def test_fill_mask_and_export_cli(default_run, env, tmp_path):
    run_dir, _, _ = default_run
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "kerasbert.fill_mask",
            "--model",
            str(run_dir),
            "the [MASK] of the game .",
            "--top-k",
            "3",
            "--json",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    top = json.loads(out.stdout)
    assert len(top) == 3
    assert top[0]["score"] >= top[1]["score"] >= top[2]["score"] > 0
    assert all("[MASK]" not in c["sequence"] for c in top)
    no_mask = subprocess.run(
        [
            sys.executable,
            "-m",
            "kerasbert.fill_mask",
            "--model",
            str(run_dir),
            "no mask here",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert no_mask.returncode == 2
    assert no_mask.stderr.strip().splitlines() == [
        "error: text: no [MASK] token in the text"
    ]

    target = tmp_path / "again.keras"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "kerasbert.export",
            str(run_dir),
            "--format",
            "keras",
            "--output",
            str(target),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    import keras

    import kerasbert.modeling  # noqa: F401

    exported, original = (
        keras.saving.load_model(str(p), safe_mode=True)
        for p in (target, run_dir / "model.keras")
    )
    x = {
        "token_ids": np.array([[2, 40, 41, 4, 3]], "int32"),
        "segment_ids": np.zeros((1, 5), "int32"),
        "padding_mask": np.ones((1, 5), "int32"),
        "mask_positions": np.array([[3]], "int32"),
    }
    for key, value in original(x).items():
        np.testing.assert_array_equal(
            np.asarray(exported(x)[key]), np.asarray(value), err_msg=key
        )


def test_rerunning_a_finished_run_does_nothing(default_run, env):
    run_dir, args, _ = default_run
    before = (run_dir / "summary.json").read_text()
    out = fit(args, env)
    assert "already complete" in out.stdout
    assert (run_dir / "summary.json").read_text() == before


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--batch-size", "0"], "--batch-size"),
        (["--learning-rate", "-1"], "--learning-rate"),
        (["--sequence-length", "600"], "--sequence-length"),
        (["--size", "huge"], "--size"),
        (["--mask-rate", "1.5"], "--mask-rate"),
        (["--max-steps", "three"], "--max-steps"),
    ],
)
def test_bad_flags_one_line_exit_2_no_run_dir(flags, message, env, tmp_path):
    run_dir = tmp_path / "run"
    out = fit(
        [*flags, "--output-dir", str(run_dir)], env, check=False, timeout=120
    )
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    assert message in lines[0]
    assert "Traceback" not in out.stderr
    assert not run_dir.exists()
    assert not list(tmp_path.iterdir())


def test_bad_corpus_leaves_no_run_dir(env, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n\n  \n")
    run_dir = tmp_path / "run"
    out = fit(
        ["--corpus", str(empty), "--output-dir", str(run_dir)],
        env,
        check=False,
        timeout=120,
    )
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1
    assert str(empty) in out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.txt"]


def test_resume_after_sigkill(env, tmp_path):
    run_dir = tmp_path / "run"
    args = [
        "--max-steps",
        "300",
        "--steps-per-epoch",
        "100",
        "--backup-every",
        "10",
        "--log-every",
        "5",
        "--output-dir",
        str(run_dir),
        *SHORT,
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "kerasbert.fit", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:
            if (run_dir / "backup" / "step-10" / "meta.json").exists():
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
        # A second run on the same directory is refused, not interleaved.
        second = fit(args, env, check=False, timeout=120)
        assert second.returncode == 2
        assert "is in use by another run" in second.stderr
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    backup_step = max(
        int(p.name[5:])
        for p in (run_dir / "backup").iterdir()
        if p.name.startswith("step-")
    )
    assert 0 < backup_step < 300
    before = {
        p.relative_to(run_dir)
        for p in run_dir.rglob("*")
        if p.is_file() and ".tmp" not in str(p) and "backup" not in p.parts
    }
    assert (tmp_path / "run.lock").exists()  # left by the killed run
    rows_before = [
        r
        for r in read_rows(run_dir / "metrics.csv")
        if int(r["step"]) <= backup_step
    ]

    out = fit(args, env)
    assert f"resuming from step {backup_step}" in out.stdout
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 300
    after = {p.relative_to(run_dir) for p in run_dir.rglob("*") if p.is_file()}
    assert before <= after  # nothing written before the kill was lost
    rows = read_rows(run_dir / "metrics.csv")
    train_steps = [int(r["step"]) for r in rows if r["split"] == "train"]
    assert train_steps == list(range(5, 301, 5))  # continuous, no repeats
    assert rows[: len(rows_before)] == rows_before
    assert not (tmp_path / "run.lock").exists()  # taken over, then freed


def test_divergence_stops_with_clear_message(
    env, tmp_path, monkeypatch, capsys, dtype_policy
):
    """A weight turned NaN mid-run (a forced divergence) stops the run."""
    import keras

    import kerasbert.modeling  # noqa: F401
    from kerasbert import fit as fit_cli
    from kerasbert.errors import run_cli
    from kerasbert.training import pretrain as run

    class PoisonAt(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if int(self.model.optimizer._iterations.numpy()) == 6:
                w = self.model.trainable_variables[0]
                w.assign(np.full(w.shape, np.nan, "float32"))

    pretrain = run.pretrain
    monkeypatch.setattr(
        run,
        "pretrain",
        lambda *a, **k: pretrain(*a, callbacks=[PoisonAt()], **k),
    )
    monkeypatch.setenv("KERASBERT_CACHE", env["KERASBERT_CACHE"])
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        run_cli(
            fit_cli.main,
            [
                "--max-steps",
                "20",
                "--steps-per-epoch",
                "4",
                "--backup-every",
                "1",
                "--output-dir",
                str(run_dir),
                *SHORT,
            ],
        )
    assert exit_info.value.code == 1
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message.startswith("error: training diverged at step 7 (loss=nan)")
    latest = run_dir / "checkpoints" / "latest.keras"
    assert str(latest) in message
    model = keras.saving.load_model(str(latest), safe_mode=True)
    assert all(np.isfinite(np.asarray(w)).all() for w in model.get_weights())
    backups = sorted(p.name for p in (run_dir / "backup").iterdir())
    assert backups == ["step-5", "step-6"]  # the last good steps; none after
    assert not (run_dir / "summary.json").exists()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_workers(args, env, fault=None):
    """Two local workers of one multi-worker run; returns their results."""
    ports = [_free_port(), _free_port()]
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for index in range(2):
        worker_env = dict(
            env,
            TF_CONFIG=json.dumps(
                {"cluster": cluster, "task": {"type": "worker", "index": index}}
            ),
        )
        if fault:
            worker_env["KERASBERT_FAULT"] = fault
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "kerasbert.fit",
                    *args,
                    "--strategy",
                    "multi_worker",
                ],
                env=worker_env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        outputs = [p.communicate(timeout=400) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return [(p.returncode, out, err) for p, (out, err) in zip(procs, outputs)]


def test_multi_worker_matches_one_process_across_a_kill(env, tmp_path):
    common = [
        "--max-steps",
        "6",
        "--steps-per-epoch",
        "6",
        "--log-every",
        "1",
        "--backup-every",
        "3",
        "--hidden-dropout",
        "0",
        "--attention-dropout",
        "0",
        "--precision",
        "float32",
        "--seed",
        "3",
        *SHORT,
    ]
    single = tmp_path / "single"
    fit([*common, "--strategy", "default", "--output-dir", str(single)], env)

    multi = tmp_path / "multi"
    args = [*common, "--output-dir", str(multi)]
    # Both workers die right after their step-3 backups...
    for code, _, err in run_workers(args, env, fault="after_backup:1"):
        assert code == -signal.SIGKILL, err[-3000:]
    # ...and the rerun resumes both from the chief's backup.
    results = run_workers(args, env)
    for code, out, err in results:
        assert code == 0, err[-3000:]
        assert "resuming from step 3" in out

    def losses(run):
        return [
            float(r["loss"])
            for r in read_rows(run / "metrics.csv")
            if r["split"] == "train"
        ]

    # The same callbacks log both: the same rows, held-out ones included.
    assert [
        (r["step"], r["split"]) for r in read_rows(single / "metrics.csv")
    ] == [(r["step"], r["split"]) for r in read_rows(multi / "metrics.csv")]
    one, two = losses(single), losses(multi)
    assert len(one) == len(two) == 6
    np.testing.assert_allclose(two, one, rtol=2e-2)
    assert not np.allclose(one[0], one[-1])  # it did learn something


def test_mirrored_strategy_run_logs_the_last_window(env, tmp_path):
    run_dir = tmp_path / "run"
    out = fit(
        [
            "--strategy",
            "mirrored",
            "--max-steps",
            "4",
            "--steps-per-epoch",
            "2",
            "--output-dir",
            str(run_dir),
            *SHORT,
        ],
        env,
    )
    assert "MirroredStrategy" in out.stdout
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 4
    # --log-every 10 > 4 steps: the run's last step still closes a row.
    rows = read_rows(run_dir / "metrics.csv")
    assert [int(r["step"]) for r in rows if r["split"] == "train"] == [4]
    assert summary["train_mlm_accuracy"] is not None


def test_init_from_a_run_starts_from_its_weights(default_run, env, tmp_path):
    import keras

    import kerasbert.modeling  # noqa: F401

    source, _, _ = default_run
    run_dir = tmp_path / "run"
    # A learning rate of ~0: the one step leaves the copied weights as
    # they were, heads included (no unigram bias over the copied one).
    out = fit(
        [
            "--init-from",
            str(source),
            "--max-steps",
            "1",
            "--learning-rate",
            "1e-12",
            "--output-dir",
            str(run_dir),
            *SHORT,
        ],
        env,
    )
    assert "init from" in out.stdout and "mlm_head" in out.stdout
    config = json.loads((run_dir / "config.json").read_text())
    assert (
        config["model"]
        == json.loads((source / "config.json").read_text())["model"]
    )
    assert (run_dir / "tokenizer" / "vocab.txt").read_bytes() == (
        source / "tokenizer" / "vocab.txt"
    ).read_bytes()
    before, after = (
        keras.saving.load_model(str(d / "model.keras"), safe_mode=True)
        for d in (source, run_dir)
    )
    for a, b in zip(before.get_weights(), after.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-6)
    bad = fit(
        [
            "--init-from",
            str(source),
            "--hidden-dim",
            "64",
            "--output-dir",
            str(tmp_path / "bad"),
            *SHORT,
        ],
        env,
        check=False,
        timeout=120,
    )
    assert bad.returncode == 2
    assert (
        bad.stderr.strip()
        .splitlines()[-1]
        .startswith("error: --hidden-dim: 64 differs from --init-from")
    )
