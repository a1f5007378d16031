"""The model a run trains, built and compiled: one place for `fit`, the
benchmarks and the GPU script.

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
