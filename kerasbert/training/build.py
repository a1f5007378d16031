"""The models runs train, built and compiled: one place for `fit`,
`finetune`, the benchmarks and the GPU script.

No TensorFlow import on this path (hardware.py imports it only where a
choice needs it), so `benchmarks/gpu.py` builds exactly this model under
Keras' JAX backend on machines without TensorFlow.
"""

import dataclasses

import keras

from kerasbert.training import hardware, optimization


def apply_precision(train_cfg):
    """Sets the global dtype policy a run computes in and picks XLA.

    Returns (policy name, why, jit_compile). Runs and the benchmarks in
    benchmarks/ call this, so both time the same choice.
    """
    policy, why = hardware.select_precision(train_cfg.precision)
    keras.mixed_precision.set_global_policy(policy)
    return policy, why, hardware.select_jit_compile(train_cfg.jit_compile)


def compile_pretrainer(model_cfg, train_cfg, total_steps, jit):
    """(model, optimizer): the pretrainer compiled with its optimizer
    (schedule, clipping) as a run trains it; call under the strategy's
    scope. The optimizer is the one given to `compile` (Keras may wrap it
    for loss scaling). The benchmarks call this too, so they time this
    very model, never a copy."""
    from kerasbert.modeling import build_pretrainer

    keras.utils.set_random_seed(train_cfg.seed)
    model = build_pretrainer(nsp=train_cfg.nsp, **dataclasses.asdict(model_cfg))
    # Heads only: the optimizer then holds slots for the heads alone and
    # the encoder's weights stay exactly as loaded.
    model.backbone.trainable = not train_cfg.heads_only
    if not train_cfg.nsp:  # no loss reaches them: leave them be
        model.nsp_head.trainable = False
        model.backbone.pooler.trainable = False
    optimizer = optimization.optimizer_from_config(train_cfg, total_steps)
    model.compile(optimizer=optimizer, jit_compile=jit)
    return model, optimizer


def compile_classifier(
    model_cfg, num_classes, finetune_cfg, total_steps, jit, weights=None
):
    """The `BertClassifier` a fine-tuning run trains (`weights`: its
    backbone's, None for random ones), compiled with AdamW and the loss
    and accuracy it logs. The GPU benchmark calls this too."""
    import dataclasses

    from kerasbert.modeling import BertBackbone, BertClassifier

    cfg = finetune_cfg
    keras.utils.set_random_seed(cfg.seed)
    backbone = BertBackbone(**dataclasses.asdict(model_cfg))
    if weights is not None:
        backbone.set_weights(weights)
    model = BertClassifier(backbone, num_classes, dropout=cfg.dropout)
    optimizer = optimization.make_optimizer(
        "adamw",
        cfg.learning_rate,
        total_steps,
        cfg.warmup_ratio,
        cfg.weight_decay,
        cfg.clipnorm,
        epsilon=cfg.adam_epsilon,
    )
    model.compile(
        optimizer=optimizer,
        # The mean over weighted rows: XLA's batches carry filler rows of
        # weight 0 (data/classification.py), which must not dilute it.
        loss=keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, reduction="mean_with_sample_weight"
        ),
        weighted_metrics=[
            keras.metrics.SparseCategoricalAccuracy(name="accuracy")
        ],
        jit_compile=jit,
    )
    return model
