"""Numerical parity with transformers' `BertForPreTraining` (torch, CPU).

Random weights of a tiny HF model are copied into ours by name; both must
give the same encoder outputs and logits. This pins down the architecture
(post-LN order, attention scaling and masking, both GELUs, tied decoder,
pooler) beyond the parameter count.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from kerasbert.modeling import build_pretrainer  # noqa: E402

V, H, L, A, FF, P = 53, 16, 2, 4, 24, 20


def hf_model(hidden_act="gelu"):
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=V,
        hidden_size=H,
        num_hidden_layers=L,
        num_attention_heads=A,
        intermediate_size=FF,
        max_position_embeddings=P,
        hidden_act=hidden_act,
        layer_norm_eps=1e-12,
    )
    model = transformers.BertForPreTraining(config).eval()
    with torch.no_grad():  # non-trivial LayerNorm and biases too
        for name, p in model.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
            # GELU inputs of order 1, where its two forms differ, and its
            # outputs weighing in (at init scale they agree to 1e-6 here).
            if name.endswith(
                (
                    "intermediate.dense.weight",
                    "output.dense.weight",
                    "transform.dense.weight",
                )
            ):
                p.mul_(40)
    return model


def copy_weights(hf, ours):
    sd = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
    emb = ours.backbone.embedding
    emb.token_embedding.embeddings.assign(
        sd["bert.embeddings.word_embeddings.weight"]
    )
    emb.position_embeddings.assign(
        sd["bert.embeddings.position_embeddings.weight"]
    )
    emb.segment_embeddings.assign(
        sd["bert.embeddings.token_type_embeddings.weight"]
    )
    emb.layer_norm.gamma.assign(sd["bert.embeddings.LayerNorm.weight"])
    emb.layer_norm.beta.assign(sd["bert.embeddings.LayerNorm.bias"])

    def dense(layer, prefix):
        layer.kernel.assign(sd[f"{prefix}.weight"].T)
        layer.bias.assign(sd[f"{prefix}.bias"])

    def norm(layer, prefix):
        layer.gamma.assign(sd[f"{prefix}.weight"])
        layer.beta.assign(sd[f"{prefix}.bias"])

    for i, block in enumerate(ours.backbone.blocks):
        p = f"bert.encoder.layer.{i}"
        # One fused kernel: HF's query, key and value side by side.
        qkv = [
            f"{p}.attention.self.{part}" for part in ("query", "key", "value")
        ]
        block.qkv_kernel.assign(
            np.concatenate([sd[f"{n}.weight"].T for n in qkv], axis=1)
        )
        block.qkv_bias.assign(np.concatenate([sd[f"{n}.bias"] for n in qkv]))
        dense(block.attention_output, f"{p}.attention.output.dense")
        norm(block.attention_layer_norm, f"{p}.attention.output.LayerNorm")
        dense(block.intermediate, f"{p}.intermediate.dense")
        dense(block.output_dense, f"{p}.output.dense")
        norm(block.output_layer_norm, f"{p}.output.LayerNorm")
    dense(ours.backbone.pooler.dense, "bert.pooler.dense")
    head = ours.mlm_head
    dense(head.dense, "cls.predictions.transform.dense")
    norm(head.layer_norm, "cls.predictions.transform.LayerNorm")
    head.output_bias.assign(sd["cls.predictions.bias"])
    dense(ours.nsp_head.dense, "cls.seq_relationship")


# transformers' hidden_act -> ours: "gelu" is the exact erf GELU there,
# "gelu_new" the tanh approximation of Google's BERT.
@pytest.mark.parametrize(
    "hidden_act,activation", [("gelu", "gelu"), ("gelu_new", "gelu_tanh")]
)
@pytest.mark.parametrize("attention_dropout", [0.1, 0.0])  # both attentions
def test_outputs_match_transformers(attention_dropout, hidden_act, activation):
    hf = hf_model(hidden_act)
    ours = build_pretrainer(
        vocabulary_size=V,
        hidden_dim=H,
        num_layers=L,
        num_heads=A,
        intermediate_dim=FF,
        max_sequence_length=P,
        attention_dropout=attention_dropout,
        activation=activation,
    )
    copy_weights(hf, ours)
    rng = np.random.default_rng(0)
    batch, seq = 3, 12
    token_ids = rng.integers(5, V, (batch, seq)).astype("int32")
    segment_ids = np.array([[0] * 6 + [1] * 6] * batch, "int32")
    padding_mask = np.ones((batch, seq), "int32")
    padding_mask[1, 8:] = 0
    padding_mask[2, 5:] = 0
    mask_positions = np.array([[1, 3, 7], [2, 4, 6], [1, 2, 3]], "int32")

    with torch.no_grad():
        out = hf(
            input_ids=torch.tensor(token_ids, dtype=torch.long),
            token_type_ids=torch.tensor(segment_ids, dtype=torch.long),
            attention_mask=torch.tensor(padding_mask, dtype=torch.long),
            output_hidden_states=True,
        )
        hf_seq = out.hidden_states[-1].numpy()
        hf_pooled = hf.bert.pooler(out.hidden_states[-1]).numpy()
        hf_mlm = np.take_along_axis(
            out.prediction_logits.numpy(), mask_positions[..., None], 1
        )
        hf_nsp = out.seq_relationship_logits.numpy()

    x = dict(
        token_ids=token_ids,
        segment_ids=segment_ids,
        padding_mask=padding_mask,
        mask_positions=mask_positions,
    )
    got = ours(x, training=False)
    # The other GELU form misses by 10x the tolerance: the match is no luck.
    other = build_pretrainer(
        **{
            **ours.backbone.get_config(),
            "name": None,
            "activation": {"gelu": "gelu_tanh", "gelu_tanh": "gelu"}[
                activation
            ],
        }
    )
    copy_weights(hf, other)
    other_seq = np.asarray(
        other.backbone(
            {k: x[k] for k in ("token_ids", "segment_ids", "padding_mask")},
            training=False,
        )["sequence_output"]
    )
    assert np.abs(other_seq - hf_seq)[padding_mask == 1].max() > 2e-4
    enc = ours.backbone(
        {k: x[k] for k in ("token_ids", "segment_ids", "padding_mask")},
        training=False,
    )
    real = padding_mask.astype(bool)
    np.testing.assert_allclose(
        np.asarray(enc["sequence_output"])[real], hf_seq[real], atol=2e-5
    )
    np.testing.assert_allclose(
        np.asarray(enc["pooled_output"]), hf_pooled, atol=2e-5
    )
    np.testing.assert_allclose(np.asarray(got["mlm_logits"]), hf_mlm, atol=5e-5)
    np.testing.assert_allclose(np.asarray(got["nsp_logits"]), hf_nsp, atol=2e-5)
