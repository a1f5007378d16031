"""The BERT model: Keras layers, backbone, pretrainer, classifier.

Imports nothing of kerasbert but itself and `config` (no TensorFlow: any
Keras backend), so it can be used (and saved and loaded with
`keras.saving.load_model(path, safe_mode=True)`) on its own.
"""

from kerasbert.modeling.backbone import BertBackbone, default_initializer_range
from kerasbert.modeling.classifier import BertClassifier
from kerasbert.modeling.layers import (
    BertEmbedding,
    EncoderBlock,
    MaskedLMHead,
    NSPHead,
    Pooler,
)
from kerasbert.modeling.optimizers import FusedAdamW
from kerasbert.modeling.pretrainer import (
    BertPretrainer,
    build_pretrainer,
    pretraining_losses,
    pretraining_sums,
)
from kerasbert.modeling.schedules import WarmupLinearDecay

__all__ = [
    "BertBackbone",
    "BertClassifier",
    "BertEmbedding",
    "BertPretrainer",
    "EncoderBlock",
    "FusedAdamW",
    "MaskedLMHead",
    "NSPHead",
    "Pooler",
    "WarmupLinearDecay",
    "build_pretrainer",
    "default_initializer_range",
    "pretraining_losses",
    "pretraining_sums",
]
