"""`python benchmarks/bench.py train`: the JSON has every field, sane.

Nothing is timed against a threshold: speed depends on the machine.
"""

import json
import os
import sys

import pytest

BENCHMARKS = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"
)
sys.path.insert(0, BENCHMARKS)  # benchmarks/ import each other by name

import bench  # noqa: E402
import throughput  # noqa: E402


def test_train_json_fields(capsys):
    bench.main(
        [
            "train",
            "--size",
            "tiny",
            "--vocabulary-size",
            "97",
            "--sequence-length",
            "16",
            "--max-predictions",
            "3",
            "--batch-size",
            "4",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--roof-seconds",
            "0.05",
            "--precision",
            "float32",
        ]
    )
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in (
        "tokens_per_s",
        "median_step_s",
        "peak_rss_mb",
        "mfu",
        "matmul_roof_tflops",
        "train_mflop_per_token",
        "model_tflops",
        "parameters",
    ):
        assert out[key] > 0, key
    assert out["steps"] == 2 and out["batch_size"] == 4
    assert out["tokens_per_s"] == pytest.approx(
        4 * 16 / out["median_step_s"], rel=1e-3
    )
    assert out["precision"] == "float32"
    assert out["cpu"]["flags"] == throughput.cpu_info()["flags"]


def test_cpu_info_reads_the_flags_the_cpu_has(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: Test CPU 9000\n"
        "flags\t\t: fpu sse2 avx2 fma avx512f\n\n"
        "processor\t: 1\nmodel name\t: Test CPU 9000\n"
        "flags\t\t: fpu sse2 avx2 fma avx512f\n"
    )
    info = throughput.cpu_info(str(cpuinfo))
    assert info["model"] == "Test CPU 9000"
    assert info["flags"] == {
        "avx2": True,
        "fma": True,
        "avx512f": True,
        "avx512_bf16": False,
        "amx_bf16": False,
    }
    assert "avx2=yes" in throughput.describe_cpu(info)
    assert "amx_bf16=no" in throughput.describe_cpu(info)


def test_benchmark_trains_the_model_fit_compiles():
    # The benchmark's model comes from build.compile_pretrainer, so it
    # has the run's optimizer (schedule, clipping) and starts from the
    # same weights as a run with the same seed.
    import numpy as np

    from kerasbert.config import ModelConfig, TrainConfig
    from kerasbert.training import build

    model_cfg = ModelConfig.from_size(
        "tiny",
        vocabulary_size=31,
        hidden_dim=8,
        num_heads=2,
        intermediate_dim=16,
        max_sequence_length=9,
    )
    train_cfg = TrainConfig(precision="float32", seed=3, batch_size=2)
    model, policy, _, _ = throughput.compiled_pretrainer(
        model_cfg, train_cfg, 100
    )
    again, _ = build.compile_pretrainer(model_cfg, train_cfg, 100, False)
    assert policy == "float32"
    assert type(model.optimizer) is type(again.optimizer)
    assert model.optimizer.global_clipnorm == again.optimizer.global_clipnorm
    for a, b in zip(model.get_weights(), again.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_flops_per_token_mini():
    # The figure: about 28 MFLOP per token for mini at 128/20.
    flops = throughput.train_flops_per_token(
        hidden_dim=256,
        num_layers=4,
        intermediate_dim=1024,
        vocabulary_size=30522,
        sequence_length=128,
        max_predictions=20,
    )
    assert 27e6 < flops < 29e6


def test_bad_flag_is_one_line(capsys):
    from kerasbert.errors import run_cli

    with pytest.raises(SystemExit) as e:
        run_cli(bench.main, ["train", "--steps", "0"])
    assert e.value.code == 2
    assert capsys.readouterr().err.startswith("error: --steps")


def test_train_real_data_takes_turns_with_synthetic(
    capsys, monkeypatch, tmp_path
):
    monkeypatch.setenv("KERASBERT_CACHE", str(tmp_path / "cache"))
    corpus = str(
        __import__("pathlib").Path(__file__).parent
        / "fixtures"
        / "wikitext_sample.raw"
    )
    bench.main(
        [
            "train",
            "--size",
            "tiny",
            "--vocabulary-size",
            "8000",
            "--sequence-length",
            "32",
            "--max-predictions",
            "5",
            "--batch-size",
            "4",
            "--steps",
            "6",
            "--warmup",
            "1",
            "--roof-seconds",
            "0.05",
            "--precision",
            "float32",
            "--real-data",
            "--corpus",
            corpus,
        ]
    )
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["real_data_tokens_per_s"] == pytest.approx(
        4 * 32 / out["real_data_median_step_s"], rel=1e-3
    )
    assert out["real_vs_synthetic_step"] == pytest.approx(
        out["real_data_median_step_s"] / out["median_step_s"], rel=1e-3
    )
    assert out["real_vs_cached_real_step"] > 0


@pytest.mark.parametrize("script", ["adapt.py", "curve.py"])
def test_accuracy_benchmarks_run_as_scripts(script):
    """`--help` through the interpreter: the script's imports resolve and
    its main runs (curve.py once lost its `__main__` guard and printed
    nothing)."""
    import subprocess

    done = subprocess.run(
        [sys.executable, os.path.join(BENCHMARKS, script), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "--markdown" in done.stdout and "--work" in done.stdout


def test_time_to_quality_runs_both_and_summarises(tmp_path):
    """benchmarks/time_to_quality.py at tiny scale on the test corpus (no
    ../shared): both runs log held-out accuracy at the same steps, and the
    summary's target and first crossings come from those rows."""
    import subprocess

    fixture = os.path.join(os.path.dirname(BENCHMARKS), "tests", "fixtures")
    corpus = os.path.join(fixture, "wikitext_sample.raw")
    done = subprocess.run(
        [
            sys.executable,
            os.path.join(BENCHMARKS, "time_to_quality.py"),
            *("--size", "tiny", "--sequence-length", "64"),
            *("--batch-size", "8", "--max-steps", "20"),
            *("--eval-every", "10", "--eval-batches", "2"),
            *("--corpus", corpus, "--heldout-corpus", corpus),
            *("--tokenizer", "", "--output-dir", str(tmp_path)),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    with open(tmp_path / "time_to_quality.jsonl", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    assert "flags" in rows[0]["machine"]
    summary = rows[-1]["summary"]
    runs = {
        impl: [r for r in rows if r.get("impl") == impl]
        for impl in ("transformers", "kerasbert")
    }
    for impl, logged in runs.items():
        assert [r["step"] for r in logged] == [10, 20], impl
        for r in logged:
            assert 0 <= r["mlm_accuracy"] <= 1
            assert 0 < r["train_s"] <= r["wall_s"]
    target = runs["transformers"][-1]["mlm_accuracy"]
    assert summary["target"] == {"mlm_accuracy": target, "step": 20}
    for impl, logged in runs.items():
        first = next((r for r in logged if r["mlm_accuracy"] >= target), None)
        expected = first and {
            k: first[k] for k in ("step", "train_s", "wall_s")
        }
        assert summary[impl] == expected, impl


def test_adapt_table_gain_is_the_mean_paired_difference():
    import adapt

    table = adapt.markdown(
        [("cola", "mcc", {"base": [10.0, 20.0], "adapt": [13.0, 21.0]})],
        ["base", "adapt"],
    )
    row = table.splitlines()[-1]
    assert row.startswith("| cola | MCC x 100 | 10.00 / 20.00 (15.00 ± 7.07)")
    # per-seed gains +3 and +1: mean +2, standard error 1
    assert row.endswith("gain **+2.00** (± 1.00) |")


def test_curve_table_compares_each_point_with_its_own_random_init():
    import curve

    info = {
        "heldout_mlm_accuracy": 0.1,
        "heldout_nsp_accuracy": 0.5,
        "pretrain_seconds": 60.0,
    }
    rows = [
        (3, 0, {}, [30.0, 40.0], [30.0, 40.0]),
        (3, 600, info, [50.0, 50.0], [30.0, 40.0]),
        (8, 0, {}, [70.0, 70.0], [70.0, 70.0]),
        (8, 600, info, [69.0, 69.0], [70.0, 70.0]),
    ]
    lines = curve.markdown(rows).splitlines()
    assert len(lines) == 2 + len(rows)
    assert lines[3].endswith("| 50.00 ± 0.00 | +15.00 |")
    assert lines[5].endswith("| 69.00 ± 0.00 | -1.00 |")
    assert "| 0.100 / 0.500 |" in lines[5]


def test_serving_benchmark_times_every_row_on_one_model(tmp_path, capsys):
    """benchmarks/serving.py at tiny scale: a random 1-layer classifier
    with its own WordPiece, the fixture's emotion texts, one round."""
    import serving

    from kerasbert.modeling import BertBackbone, BertClassifier
    from kerasbert.text.tokenizer import train_wordpiece

    texts = os.path.join(
        os.path.dirname(__file__), "fixtures", "finetune", "emotion_test.txt"
    )
    tokenizer = train_wordpiece(
        serving.read_texts(texts, 60), vocab_size=200, progress=False
    )
    backbone = BertBackbone(
        vocabulary_size=tokenizer.vocabulary_size,
        hidden_dim=16,
        num_layers=1,
        num_heads=2,
        intermediate_dim=32,
        max_sequence_length=32,
        activation="gelu",
    )
    model_dir = tmp_path / "classifier"
    tokenizer.save(str(model_dir / "tokenizer"))
    BertClassifier(backbone, num_classes=3).save(str(model_dir / "model.keras"))
    (model_dir / "config.json").write_text(
        json.dumps(
            {
                "model": {},
                "labels": ["sadness", "joy", "anger"],
                "finetune": {"max_length": 24, "truncation": "head"},
            }
        )
    )
    serving.main(
        [
            "--model",
            str(model_dir),
            "--texts",
            texts,
            "--examples",
            "20",
            "--batch-size",
            "8",
            "--rounds",
            "1",
            "--work",
            str(tmp_path / "work"),
        ]
    )
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = ("savedmodel", "predict", "keras", "pipeline", "torch")
    assert set(out["examples_per_s"]) == set(rows)
    assert all(out["examples_per_s"][k] > 0 for k in rows)
    assert out["over_pipeline"]["pipeline"] == 1.0
    # The same model on both sides: same probabilities, same labels.
    assert out["probability_gap_first_batch"] < 1e-5
    assert out["label_agreement_with_pipeline"] == {k: 1.0 for k in rows}
    assert out["examples"] == 20 and out["max_length"] == 24
    assert out["cpu"]["flags"] == throughput.cpu_info()["flags"]


def test_payoff_smoke_runs_every_arm_and_a_rerun_skips(tmp_path):
    """benchmarks/payoff.py --smoke: every arm pretrains (tiny, on the
    fixtures) and fine-tunes with --patience; one row per run in the
    results file; a rerun finds them all and trains nothing."""
    import subprocess

    results = tmp_path / "results.jsonl"
    cmd = [
        sys.executable,
        os.path.join(BENCHMARKS, "payoff.py"),
        *("--smoke", "--work", str(tmp_path / "work")),
        *("--results", str(results)),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    kinds = [(r["kind"], r["arm"]) for r in rows]
    assert kinds == [
        ("grid", "random"),
        ("cell", "random"),
        ("pretrain", "self"),
        ("grid", "self"),
        ("cell", "self"),
        ("pretrain", "general"),
        ("grid", "general"),
        ("cell", "general"),
        ("pretrain", "general+adapt"),
        ("grid", "general+adapt"),
        ("cell", "general+adapt"),
    ]
    for r in rows:
        assert "flags" in r["machine"] and r["commit"] and r["date"]
        if r["kind"] != "pretrain":
            assert 0 <= r["test"] <= 1 and 1 <= r["epochs_trained"] <= 2
    assert rows[8]["base"]["pretrain_steps"] == 2  # adapt's general
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(results.read_text().splitlines()) == len(rows)
    assert "| general+adapt (0.003) |" in again.stdout


def test_payoff_table_gain_is_the_mean_paired_difference():
    import payoff

    def cell(arm, seed, test):
        return dict(
            kind="cell",
            task="emotion",
            arm=arm,
            labels=100,
            seed=seed,
            lr=1e-4,
            test=test,
        )

    rows = [
        cell("random", 0, 0.40),
        cell("random", 1, 0.50),
        cell("self", 0, 0.46),
        cell("self", 1, 0.52),
        dict(
            kind="pretrain",
            task="emotion",
            arm="self",
            pretrain_steps=9,
            wall_seconds=120.0,
            heldout_mlm_accuracy=0.25,
        ),
    ]
    table = payoff.table(rows, "emotion", ["random", "self"])
    lines = table.splitlines()
    assert lines[2] == "| random (0.0001) | none | 45.0 ± 7.1 (n=2) |"
    # per-seed gains +6 and +2: mean +4, standard error 2
    assert lines[3] == (
        "| self (0.0001) | 9 steps, 2 min, held-out MLM 0.250 | "
        "49.0 ± 4.2 (n=2), **+4.0** ± 2.0 |"
    )


def test_packing_benchmark_smoke_runs_both_contenders(tmp_path):
    """benchmarks/packing.py --smoke: both contenders train on the same
    real-token budget from the test fixture's tweets, and report fill,
    speed and held-out accuracy (numbers, not asserted speeds)."""
    import subprocess

    done = subprocess.run(
        [
            sys.executable,
            os.path.join(BENCHMARKS, "packing.py"),
            "--smoke",
            *("--output-dir", str(tmp_path)),
        ],
        env=dict(os.environ, KERASBERT_CACHE=str(tmp_path / "cache")),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(x) for x in done.stdout.splitlines() if x[:1] == "{"]
    assert "flags" in lines[0]["machine"]
    rows = {r["contender"]: r for r in lines if "contender" in r}
    assert set(rows) == {"unpacked", "packed", "packed_same_steps"}
    assert rows["packed"]["fill"] > rows["unpacked"]["fill"]
    assert rows["packed"]["steps"] < rows["unpacked"]["steps"]
    same = rows["packed_same_steps"]
    assert same["batch_size"] < rows["packed"]["batch_size"]
    for r in rows.values():
        assert abs(r["real_tokens"] - 3000) < 0.1 * 3000, r
        assert r["real_tokens_per_second"] > 0
        assert 0 <= r["heldout_mlm_accuracy"] <= 1
    assert lines[-1]["speedup_real_tokens_per_second"] > 0
    assert set(lines[-1]["in_turns"]) == {"unpacked", "packed"}


def test_payoff_budget_grid_and_row_keys():
    """Fewer labels wait as many optimizer steps; the learning-rate grid
    grows past an end that wins; random-weights rows are shared by every
    pretraining budget, pretrained ones are not."""
    from types import SimpleNamespace

    import payoff

    args = SimpleNamespace(
        grid_labels=300, epochs=60, patience=10, size="mini",
        vocab_size=8000, pretrain_steps=4500, packing="on", adapt_steps=1500,
        adapt_learning_rate=1e-4, validation_size=500, batch_size=8,
        max_length=64, learning_rates=[1e-4, 3e-4, 1e-3],
    )  # fmt: skip
    assert payoff.budget(args, 100) == (180, 30)
    assert payoff.budget(args, 300) == payoff.budget(args, 1000) == (60, 10)

    asked = []

    def score(lr):  # best at 3e-3, beyond the given grid
        asked.append(lr)
        return {"lr": lr, "validation": -abs(lr - 3e-3)}

    bench = SimpleNamespace(args=args)
    assert payoff.Bench.grid(bench, score) == 3e-3
    assert asked == [1e-4, 3e-4, 1e-3, 3e-3, 9e-3]
    # an interior best asks nothing more; an unknown row: no answer yet
    asked.clear()
    args.learning_rates = [1e-3, 3e-3, 9e-3]
    assert payoff.Bench.grid(bench, score) == 3e-3 and len(asked) == 3
    assert payoff.Bench.grid(bench, lambda lr: None) is None

    old = {**payoff.recipe(args, "general+adapt", 300), "pretrain_steps": 1500}
    row = {"recipe": old}
    assert payoff.matches(row, payoff.recipe(args, "random", 300))
    assert not payoff.matches(row, payoff.recipe(args, "random", 100))
    assert not payoff.matches(row, payoff.recipe(args, "self", 300))
    assert payoff.matches(
        {"recipe": payoff.recipe(args, "self", 300)},
        payoff.recipe(args, "self", 300),
    )
