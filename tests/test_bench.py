"""`python -m kerasbert.bench train`: the JSON has every field, sane.

Nothing is timed against a threshold: speed depends on the machine.
"""

import json

import pytest

from kerasbert import bench
from kerasbert.training import throughput


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
    assert set(out["cpu"]["flags"]) >= {"avx2", "avx512_bf16", "amx_bf16"}


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


def test_train_real_data_takes_turns_with_synthetic(capsys, monkeypatch,
                                                     tmp_path):
    monkeypatch.setenv("KERASBERT_CACHE", str(tmp_path / "cache"))
    corpus = str(
        __import__("pathlib").Path(__file__).parent
        / "fixtures"
        / "wikitext_sample.raw"
    )
    bench.main(
        ["train", "--size", "tiny", "--vocabulary-size", "8000",
         "--sequence-length", "32", "--max-predictions", "5",
         "--batch-size", "4", "--steps", "6", "--warmup", "1",
         "--roof-seconds", "0.05", "--precision", "float32",
         "--real-data", "--corpus", corpus]
    )
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["real_data_tokens_per_s"] == pytest.approx(
        4 * 32 / out["real_data_median_step_s"], rel=1e-3
    )
    assert out["real_vs_synthetic_step"] == pytest.approx(
        out["real_data_median_step_s"] / out["median_step_s"], rel=1e-3
    )
    assert out["real_vs_cached_real_step"] > 0
