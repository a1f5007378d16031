"""Configuration dataclasses and the named model sizes.

Defaults live here and only here. The CLI (`kerasbert.fit`) turns every field
into a flag of the same name with dashes, a `--config FILE.json` may hold any
of them, and the resolved values are saved beside the checkpoints.
Constructors elsewhere take plain keyword arguments: `BertBackbone(
**asdict(model_config))`, never a config object.
"""

import dataclasses
import json
import os
from dataclasses import dataclass, fields

from kerasbert.errors import UsageError

# Choices of the string-valued train fields (checked before TF is imported).
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
JIT_COMPILE = ("auto", "on", "off")
STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker")
OPTIMIZERS = ("adamw", "lamb")
MLM_BIAS_INITS = ("unigram", "zeros")

# layers / hidden / heads / intermediate. tiny..large follow the BERT
# miniatures (Turc et al. 2019) and the original paper; `comment` is the
# 6-layer, 256-wide model of a Korean/English emotion-comment project
# (7,000-piece SentencePiece vocabulary, 256-token inputs).
SIZES = {
    "tiny": dict(num_layers=2, hidden_dim=128, num_heads=2,
                 intermediate_dim=512),
    "mini": dict(num_layers=4, hidden_dim=256, num_heads=4,
                 intermediate_dim=1024),
    "small": dict(num_layers=4, hidden_dim=512, num_heads=8,
                  intermediate_dim=2048),
    "medium": dict(num_layers=8, hidden_dim=512, num_heads=8,
                   intermediate_dim=2048),
    "base": dict(num_layers=12, hidden_dim=768, num_heads=12,
                 intermediate_dim=3072),
    "large": dict(num_layers=24, hidden_dim=1024, num_heads=16,
                  intermediate_dim=4096),
    "comment": dict(num_layers=6, hidden_dim=256, num_heads=4,
                    intermediate_dim=1024, max_sequence_length=256,
                    vocabulary_size=7000),
}


def read_json_object(path: str, label: str) -> dict:
    """A JSON object from `path`; bad files raise `UsageError(label: ...)`."""
    try:
        with open(path, encoding="utf-8") as f:
            values = json.load(f)
    except FileNotFoundError:
        raise UsageError(f"{label}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"{label}: not valid JSON ({e})") from None
    if not isinstance(values, dict):
        raise UsageError(f"{label}: expected a JSON object")
    return values


class _JsonMixin:
    """JSON save/load shared by the three config dataclasses."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: str) -> None:
        tmp = f"{path}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)

    @classmethod
    def from_dict(cls, values: dict, source: str = "config"):
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UsageError(f"{source}: unknown field(s) {', '.join(unknown)}")
        return cls(**values)

    @classmethod
    def load(cls, path: str):
        return cls.from_dict(read_json_object(path, path), source=path)


@dataclass
class ModelConfig(_JsonMixin):
    """The BERT architecture. Field names are `BertBackbone` kwargs."""

    vocabulary_size: int = 30522
    hidden_dim: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_dim: int = 3072
    max_sequence_length: int = 512
    num_segments: int = 2
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    layer_norm_epsilon: float = 1e-12
    initializer_range: float | None = None  # None: model.default_initializer_range

    @classmethod
    def from_size(cls, size: str, **overrides) -> "ModelConfig":
        if size not in SIZES:
            raise UsageError(
                f"--size: unknown size {size!r} (choose from "
                f"{', '.join(SIZES)})")
        return cls(**{**SIZES[size], **overrides})

    def validate(self) -> "ModelConfig":
        for name in ("vocabulary_size", "hidden_dim", "num_layers",
                     "num_heads", "intermediate_dim", "max_sequence_length",
                     "num_segments"):
            if getattr(self, name) <= 0:
                raise UsageError(f"--{name.replace('_', '-')}: must be > 0")
        if self.hidden_dim % self.num_heads:
            raise UsageError(
                f"--hidden-dim: {self.hidden_dim} is not divisible by "
                f"--num-heads {self.num_heads}")
        if self.initializer_range is not None and self.initializer_range <= 0:
            raise UsageError("--initializer-range: must be > 0")
        for name in ("hidden_dropout", "attention_dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')}: must be in [0, 1)")
        return self


@dataclass
class DataConfig(_JsonMixin):
    """Corpus, tokenizer, NSP pairing and masking."""

    corpus: str | None = None  # None: the bundled WikiText-2 sample
    corpus_format: str = "auto"  # auto|text|wikitext|wikiextractor|jsonl|hf
    one_doc_per_line: bool = False
    text_field: str = "text"  # for jsonl and hf
    hf_config: str | None = None
    hf_split: str = "train"
    language: str = "auto"  # en|ko|auto
    clean: bool = False  # extra web/Korean cleaning (URLs, emoji, repeats)
    tokenizer: str | None = None  # dir, vocab.txt or .model; None: train
    vocab_size: int = 8000  # when training a WordPiece vocabulary
    lowercase: bool = True
    strip_accents: bool | None = None  # None: follow `lowercase`
    cache_dir: str | None = None  # None: ~/.cache/kerasbert
    sequence_length: int = 128
    max_predictions: int = 20
    mask_rate: float = 0.15
    whole_word: bool = False
    nsp_probability: float = 0.5
    short_seq_prob: float = 0.1
    holdout_fraction: float = 0.05
    heldout_corpus: str | None = None  # evaluate on this instead of a split


@dataclass
class TrainConfig(_JsonMixin):
    """Optimisation, precision, distribution and bookkeeping."""

    batch_size: int = 32
    max_steps: int | None = None  # wins over `epochs` when set
    epochs: int = 15
    steps_per_epoch: int | None = None  # None: one pass over the pairs
    learning_rate: float = 5e-4
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    adam_epsilon: float = 1e-6  # AdamW/LAMB epsilon (Google BERT: 1e-6)
    optimizer: str = "adamw"  # adamw|lamb
    mlm_bias_init: str = "unigram"  # unigram|zeros (see train.unigram_log_prior)
    gradient_accumulation_steps: int = 1
    clipnorm: float = 1.0
    precision: str = "auto"  # auto|float32|mixed_float16|mixed_bfloat16
    jit_compile: str = "auto"  # auto|on|off
    strategy: str = "auto"  # auto|one_device|mirrored|multi_worker
    seed: int = 0
    output_dir: str | None = None  # None: runs/<timestamp>
    backup_every: int = 50  # steps between resume backups
    eval_batches: int = 20  # held-out batches per evaluation
    log_every: int = 10  # steps per metrics.csv row and TensorBoard point
    overwrite: bool = False  # start afresh even if output_dir holds a run
