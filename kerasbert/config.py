"""Configuration dataclasses and the named model sizes.

Each field's default, help text, allowed values and range live here and
only here, in the field's metadata:

    help     the flag's help text (commands build `--field-name` flags from it)
    choices  the allowed values of a string field
    min/max  inclusive bounds; `above`/`below` exclusive ones
    flag     False for fields a command sets itself (never a flag)

`validate()` checks every field of one config and its cross-field rules and
raises `UsageError` naming the flag; `validate_pretraining` adds the rules
that span configs. Commands call them once, before anything is written.
Constructors elsewhere take plain keyword arguments: `BertBackbone(
**asdict(model_config))`, never a config object.
"""

import dataclasses
import os
import sys
from dataclasses import dataclass, field, fields

from kerasbert.errors import UsageError
from kerasbert.files import read_json

# layers / hidden / heads / intermediate. tiny..large follow the BERT
# miniatures (Turc et al. 2019) and the original paper; `comment` is the
# 6-layer, 256-wide model of a Korean/English emotion-comment project
# (7,000-piece SentencePiece vocabulary, 256-token inputs).
SIZES = {
    "tiny": dict(
        num_layers=2, hidden_dim=128, num_heads=2, intermediate_dim=512
    ),
    "mini": dict(
        num_layers=4, hidden_dim=256, num_heads=4, intermediate_dim=1024
    ),
    "small": dict(
        num_layers=4, hidden_dim=512, num_heads=8, intermediate_dim=2048
    ),
    "medium": dict(
        num_layers=8, hidden_dim=512, num_heads=8, intermediate_dim=2048
    ),
    "base": dict(
        num_layers=12, hidden_dim=768, num_heads=12, intermediate_dim=3072
    ),
    "large": dict(
        num_layers=24, hidden_dim=1024, num_heads=16, intermediate_dim=4096
    ),
    "comment": dict(
        num_layers=6,
        hidden_dim=256,
        num_heads=4,
        intermediate_dim=1024,
        max_sequence_length=256,
        vocabulary_size=7000,
    ),
}


# The GELU forms a model may use (`ModelConfig.activation`, `BertBackbone`).
ACTIVATIONS = ("gelu_tanh", "gelu")


def option(default, help, **rules):
    """A dataclass field whose metadata carries its help text and rules."""
    return field(default=default, metadata={"help": help, **rules})


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def field_type(f) -> type:
    """`int | None` -> int, `float` -> float, ..."""
    kinds = [
        k for k in getattr(f.type, "__args__", (f.type,)) if k is not type(None)
    ]
    return kinds[0]


def check_field(cls, name: str, value) -> None:
    """Checks one value against field `name` of config class `cls`: the
    library functions that take such a value directly (without a config)
    apply the same rule and message as the command line."""
    _check_field(next(f for f in fields(cls) if f.name == name), value)


def read_json_object(path: str, label: str) -> dict:
    """A JSON object from `path`, read as every file of an untrusted folder
    is (`files.read_json`: a regular file, bounded, not nested deeper than
    `files.JSON_DEPTH`, no NaN); bad files raise `UsageError(label: ...)`."""
    values = read_json(path, label)
    if not isinstance(values, dict):
        raise UsageError(f"{label}: expected a JSON object")
    return values


def _check_field(f, value) -> None:
    """Type, choices and range of one field; `UsageError` names the flag."""
    flag, rules = flag_name(f.name), f.metadata
    if value is None:
        if "None" in str(f.type):
            return
        raise UsageError(f"{flag}: a value is required")
    kind = field_type(f)
    # JSON has no int/float split: 3 is a fine float, 8.5 is no int.
    ok = (
        isinstance(value, bool)
        if kind is bool
        else isinstance(value, int) and not isinstance(value, bool)
        if kind is int
        else isinstance(value, int | float) and not isinstance(value, bool)
        if kind is float
        else isinstance(value, kind)
    )
    if not ok:
        raise UsageError(f"{flag}: expected {kind.__name__}, got {value!r}")
    # (a JSON int too big for a float is no finite number either)
    if kind is float and not abs(value) <= sys.float_info.max:
        raise UsageError(f"{flag}: must be a finite number, got {value}")
    if "choices" in rules and value not in rules["choices"]:
        raise UsageError(
            f"{flag}: unknown value {value!r} (choose from "
            f"{', '.join(rules['choices'])})"
        )
    for key, op, inside in (
        ("min", ">=", lambda v, b: v >= b),
        ("max", "<=", lambda v, b: v <= b),
        ("above", ">", lambda v, b: v > b),
        ("below", "<", lambda v, b: v < b),
    ):
        if key in rules and not inside(value, rules[key]):
            raise UsageError(f"{flag}: must be {op} {rules[key]}, got {value}")


# What --overwrite does, for every command that trains into --output-dir.
OVERWRITE_HELP = (
    "replace an existing --output-dir: the new run is built beside it "
    "(.NAME.replacing/) and swapped in when complete; until then the old "
    "one stays as it was"
)


def precision_option():
    """The --precision field, the same for pretraining and fine-tuning."""
    return option(
        "auto",
        "auto: bfloat16 where the CPU/GPU computes it natively, "
        "float16 on older GPUs, else float32",
        choices=("auto", "float32", "mixed_float16", "mixed_bfloat16"),
    )


STRATEGY_HELP = (
    "distribution: default (TF's default strategy: the first GPU, else the "
    "CPU), mirrored (every local GPU), multi_worker (reads TF_CONFIG); "
    "auto = mirrored with 2+ GPUs, else default"
)


def strategy_option(multi_worker=True):
    """The --strategy field. Fine-tuning runs on one machine (its run
    directory has no chief/worker split), so it has no multi_worker."""
    if multi_worker:
        return option(
            "auto",
            f"{STRATEGY_HELP}. one_device is default's former name, kept "
            "so that old run directories resume",
            choices=(
                "auto",
                "default",
                "mirrored",
                "multi_worker",
                "one_device",
            ),
        )
    return option(
        "auto",
        STRATEGY_HELP.replace(", multi_worker (reads TF_CONFIG)", ""),
        choices=("auto", "default", "mirrored"),
    )


def warmup_ratio_option():
    """The --warmup-ratio field, the same for pretraining and fine-tuning."""
    return option(
        0.1,
        "share of steps of linear warm-up (then linear decay)",
        min=0,
        max=1,
    )


def weight_decay_option():
    """The --weight-decay field, the same for pretraining and fine-tuning."""
    return option(
        0.01, "decoupled weight decay (not on LayerNorm and bias)", min=0
    )


def clipnorm_option():
    """The --clipnorm field, the same for pretraining and fine-tuning."""
    return option(1.0, "global gradient-norm clipping (0 turns it off)", min=0)


def nsp_option():
    """The --nsp field, the same for pretraining and adaptation."""
    return option(
        True,
        "train next-sentence prediction beside the masked LM (--no-"
        "nsp: masked LM only, and every B is the text that follows A)",
    )


def packing_option():
    """The --packing field, the same for pretraining and adaptation."""
    return option(
        "auto",
        "pack several whole texts per row, each with its own positions and "
        "attention (masked LM only; auto: on with --no-nsp)",
        choices=("auto", "on", "off"),
    )


def resolve_packing(packing: str, nsp: bool) -> str:
    """--packing's "auto": "on" for masked LM only (short texts fill a
    row several times over), "off" with NSP (a row has one [CLS])."""
    if packing == "on" and nsp:
        raise UsageError(
            "--packing: on needs --no-nsp (NSP reads one [CLS] per row; a "
            "packed row holds several texts)"
        )
    if packing == "auto":
        return "off" if nsp else "on"
    return packing


def columns_option():
    """The --columns field, the same for corpora and fine-tuning data."""
    return option(
        None, "comma-separated column names of header-less TSV/CSV files"
    )


def jit_compile_option():
    """The --jit-compile field, the same for pretraining and fine-tuning."""
    return option(
        "auto", "XLA (auto: on with a GPU)", choices=("auto", "on", "off")
    )


class _Config:
    """Dict round trip and field validation shared by the configs."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict, source: str = "config"):
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UsageError(f"{source}: unknown field(s) {', '.join(unknown)}")
        return cls(**values)

    def validate(self):
        """Checks every field (type, choices, range), then cross-field
        rules; returns self. Raises `UsageError` naming the flag."""
        for f in fields(self):
            _check_field(f, getattr(self, f.name))
        self._cross_checks()
        return self

    def _cross_checks(self) -> None:
        pass


@dataclass
class ModelConfig(_Config):
    """The BERT architecture. Field names are `BertBackbone` kwargs."""

    vocabulary_size: int = option(
        30522, "set from the tokenizer", min=1, flag=False
    )
    hidden_dim: int = option(
        768, "width of every layer (overrides --size)", min=1
    )
    num_layers: int = option(12, "encoder blocks (overrides --size)", min=1)
    num_heads: int = option(12, "attention heads (overrides --size)", min=1)
    intermediate_dim: int = option(
        3072, "feed-forward width (overrides --size)", min=1
    )
    max_sequence_length: int = option(512, "position table length", min=1)
    num_segments: int = option(2, "segment (token type) table length", min=1)
    hidden_dropout: float = option(
        0.1, "dropout after embeddings, attention and FFN", min=0, below=1
    )
    attention_dropout: float = option(
        0.1,
        "dropout on attention probabilities (0 enables fused attention)",
        min=0,
        below=1,
    )
    layer_norm_epsilon: float = option(
        1e-12, "LayerNorm epsilon", above=0, max=1
    )
    initializer_range: float | None = option(
        None,
        "std of the truncated-normal initialisers (default 0.02, "
        "0.02*sqrt(768/hidden-dim) when narrower than 768)",
        above=0,
        max=1,  # BERT's 0.02; a std of 1 already saturates every layer
    )
    activation: str = option(
        "gelu_tanh",
        "GELU of the feed-forward and MLM-transform layers: "
        "gelu_tanh (tanh approximation, Google's BERT) or gelu (exact erf, "
        "Hugging Face's 'gelu')",
        choices=ACTIVATIONS,
    )

    # What a config.json written before a field existed meant by leaving it
    # out: models before `activation` were trained with the exact GELU.
    LEGACY = {"activation": "gelu"}

    @classmethod
    def from_dict(cls, values: dict, source: str = "config"):
        return super().from_dict({**cls.LEGACY, **values}, source)

    @classmethod
    def from_size(cls, size: str, **overrides) -> "ModelConfig":
        if size not in SIZES:
            raise UsageError(
                f"--size: unknown size {size!r} (choose from "
                f"{', '.join(SIZES)})"
            )
        return cls(**{**SIZES[size], **overrides})

    def _cross_checks(self) -> None:
        for name in ARCHITECTURE:  # bounds that span configs
            if getattr(self, name) > SIZE_LIMITS[name]:
                raise UsageError(
                    f"{flag_name(name)}: must be <= {SIZE_LIMITS[name]:,}, "
                    f"got {getattr(self, name):,}"
                )
        if self.hidden_dim % self.num_heads:
            raise UsageError(
                f"--hidden-dim: {self.hidden_dim} is not divisible by "
                f"--num-heads {self.num_heads}"
            )


# The ModelConfig fields that fix the weights' shapes: a model's weights
# load only into a model built with the same values.
ARCHITECTURE = (
    "vocabulary_size",
    "hidden_dim",
    "num_layers",
    "num_heads",
    "intermediate_dim",
    "max_sequence_length",
    "num_segments",
)


# Bounds for a model read from someone else's files (a checkpoint's
# config.json, a .keras file): far above any published BERT, low enough
# that a crafted file fails in one line instead of building layers for
# minutes and dying of MemoryError.
SIZE_LIMITS = {
    "vocabulary_size": 1_000_000,
    "hidden_dim": 16_384,
    "num_layers": 256,
    "num_heads": 1024,
    "intermediate_dim": 65_536,
    "max_sequence_length": 65_536,
    "num_segments": 1024,
    "num_classes": 100_000,  # a classifier's head
}

# numpy's and TensorFlow's seeds are 32-bit.
SEED_LIMIT = 2**32


def machine_memory() -> int | None:
    """This machine's physical memory in bytes, or None if unknown."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def parameter_count(
    vocabulary_size,
    hidden_dim,
    num_layers,
    intermediate_dim,
    max_sequence_length,
    num_segments,
    **_,
) -> int:
    """Weights of a `BertPretrainer` of these sizes (backbone + heads)."""
    v, h, i = vocabulary_size, hidden_dim, intermediate_dim
    embeddings = (v + max_sequence_length + num_segments) * h + 2 * h
    block = 4 * (h * h + h) + 2 * (h * i) + i + h + 4 * h
    heads = (h * h + h) + 2 * h + v + (2 * h + 2)  # MLM transform, NSP
    return embeddings + num_layers * block + (h * h + h) + heads


def check_model_size(values: dict, label: str, copies: int) -> None:
    """Refuses architecture `values` (ModelConfig fields) from an untrusted
    file before anything is built: each size within `SIZE_LIMITS`, and
    `copies` float32 copies of the weights within this machine's memory
    (a conversion holds about 3, training 4: weights, gradients, Adam)."""
    for name, limit in SIZE_LIMITS.items():
        value = values.get(name)
        if value is None:
            continue
        if (
            not isinstance(value, int)
            or isinstance(value, bool)
            or not 1 <= value <= limit
        ):
            raise UsageError(
                f"{label}: {name} {value!r} is not in "
                f"1..{limit:,} (the limit for a model read "
                "from a file)"
            )
    if not all(
        isinstance(values.get(k), int)
        for k in (
            "vocabulary_size",
            "hidden_dim",
            "num_layers",
            "intermediate_dim",
        )
    ):
        return
    sizes = {"max_sequence_length": 512, "num_segments": 2, **values}
    count = parameter_count(**sizes)
    needed = count * 4 * copies
    memory = machine_memory()
    if memory and needed > memory:
        raise UsageError(
            f"{label}: a model of {count / 1e6:,.0f}M parameters needs about "
            f"{needed / 1e9:,.1f} GB of memory here, more than this "
            f"machine's {memory / 1e9:,.1f} GB"
        )


# Labelled-data formats (kerasbert.data.classification) that `fit` reads
# too, labels ignored: continued pretraining on a task's own texts.
EXAMPLE_FORMATS = ("tsv", "csv", "semicolon", "folder")
CORPUS_FORMATS = (
    "auto",
    "text",
    "wikitext",
    "wikiextractor",
    "jsonl",
    "hf",
    *EXAMPLE_FORMATS,
)
LANGUAGES = ("auto", "en", "ko")


@dataclass
class DataConfig(_Config):
    """Corpus, tokenizer, NSP pairing and masking."""

    corpus: str | None = option(
        None,
        "file or folder of text (default: bundled WikiText-2 sample);"
        " with --corpus-format hf, a datasets name",
    )
    corpus_format: str = option(
        "auto", "how to read --corpus", choices=CORPUS_FORMATS
    )
    one_doc_per_line: bool = option(
        False, "plain text: each line is a document"
    )
    text_field: str = option(
        "text",
        "jsonl/hf/tsv/csv: the field or column holding the text",
        aliases=("--text-column",),
    )
    columns: str | None = columns_option()
    hf_config: str | None = option(None, "hf: dataset configuration name")
    hf_split: str = option("train", "hf: split to read")
    language: str = option(
        "auto",
        "sentence splitter: en (nltk punkt), ko (kss), auto",
        choices=LANGUAGES,
    )
    clean: bool = option(
        False, "remove URLs, e-mails, emoji and long character repeats"
    )
    tokenizer: str | None = option(
        None,
        "dir, vocab.txt or SentencePiece .model (default: train "
        "WordPiece on the corpus)",
    )
    vocab_size: int = option(
        8000,
        "WordPiece vocabulary size when training one",
        min=10,
        max=SIZE_LIMITS["vocabulary_size"],
    )
    lowercase: bool = option(True, "lower-case text when training a tokenizer")
    strip_accents: bool | None = option(
        None, "strip accents (default: same as --lowercase; never for Korean)"
    )
    cache_dir: str | None = option(
        None, "token cache (default ~/.cache/kerasbert or $KERASBERT_CACHE)"
    )
    sequence_length: int = option(
        128, "tokens per sequence including [CLS]/[SEP]", min=8
    )
    max_predictions: int = option(
        20, "masked positions per sequence at most", min=1
    )
    mask_rate: float = option(
        0.15,
        "share of tokens to predict (80/10/10 rule; 0: NSP only)",
        min=0,
        max=1,
    )
    whole_word: bool = option(False, "mask whole words, not word pieces")
    nsp_probability: float = option(
        0.5, "share of pairs whose B is random (label 1)", min=0, max=1
    )
    short_seq_prob: float = option(
        0.1, "share of pairs with a shorter target length", min=0, max=1
    )
    holdout_fraction: float = option(
        0.05,
        "share of documents held out for evaluation (a corpus of "
        "fewer than 4 documents has none)",
        min=0,
        max=0.5,
    )
    heldout_corpus: str | None = option(
        None, "evaluate on this corpus instead of a held-out share"
    )
    packing: str = packing_option()

    # Runs saved before --packing existed were never packed.
    LEGACY = {"packing": "off"}

    def _cross_checks(self) -> None:
        if self.max_predictions > self.sequence_length - 3:
            raise UsageError(
                f"--max-predictions: {self.max_predictions} is more than the "
                f"{self.sequence_length - 3} maskable tokens of "
                f"--sequence-length {self.sequence_length}"
            )


@dataclass
class TrainConfig(_Config):
    """Optimisation, precision, distribution and bookkeeping."""

    batch_size: int = option(32, "global batch size (all replicas)", min=1)
    max_steps: int | None = option(
        None, "total training steps (wins over --epochs)", min=1
    )
    epochs: int = option(6, "epochs when --max-steps is not set", min=1)
    steps_per_epoch: int | None = option(
        None,
        "steps between evaluations (default: one pass over the sentence pairs)",
        min=1,
    )
    learning_rate: float = option(5e-4, "peak learning rate", above=0)
    warmup_ratio: float = warmup_ratio_option()
    weight_decay: float = weight_decay_option()
    adam_epsilon: float = option(
        1e-6, "epsilon of AdamW/LAMB (Google BERT 1e-6, HF 1e-8)", above=0
    )
    optimizer: str = option("adamw", "optimizer", choices=("adamw", "lamb"))
    mlm_bias_init: str = option(
        "unigram",
        "MLM output bias at step 0 (unigram: log token "
        "frequencies of the training documents; zeros: BERT's)",
        choices=("unigram", "zeros"),
    )
    gradient_accumulation_steps: int = option(
        1, "batches per optimizer update", min=1
    )
    clipnorm: float = clipnorm_option()
    precision: str = precision_option()
    jit_compile: str = jit_compile_option()
    strategy: str = strategy_option()
    seed: int = option(
        0,
        "seed for weights, pairs, masks and dropout",
        min=0,
        below=SEED_LIMIT,
    )
    nsp: bool = nsp_option()
    heads_only: bool = option(
        False,
        "train the MLM and NSP heads only, the encoder frozen: a "
        "warm-up for heads that --init-from's checkpoint lacks",
    )
    init_from: str | None = option(
        None,
        "start from the weights of this model directory (a run, or "
        "kerasbert.convert's output); its architecture and tokenizer are "
        "used",
    )
    output_dir: str | None = option(
        None,
        "run directory (default: runs/<size>); rerun the same "
        "command to resume",
    )
    backup_every: int = option(50, "steps between resume backups", min=1)
    eval_batches: int = option(
        20, "held-out batches evaluated at each epoch's end (0: none)", min=0
    )
    final_eval_batches: int | None = option(
        None,
        "held-out batches of the final evaluation, the one in "
        "summary.json (default: --eval-batches)",
        min=1,
    )
    log_every: int = option(10, "steps per metrics.csv row", min=1)
    overwrite: bool = option(False, OVERWRITE_HELP)


def validate_pretraining(
    model: ModelConfig, data: DataConfig, train: TrainConfig
) -> None:
    """Every rule on the three configs of a pretraining run."""
    model.validate()
    data.validate()
    train.validate()
    if data.sequence_length > model.max_sequence_length:
        raise UsageError(
            f"--sequence-length: {data.sequence_length} is above "
            f"--max-sequence-length {model.max_sequence_length}"
        )
    resolve_packing(data.packing, train.nsp)
    check_attention_memory(model, data.sequence_length, train.batch_size)
    if train.heads_only and not train.init_from:
        raise UsageError(
            "--heads-only: needs --init-from (the trained encoder whose "
            "heads to train; a random encoder, frozen, learns nothing)"
        )


def check_attention_memory(
    model: ModelConfig, sequence_length: int, batch_size: int
) -> None:
    """Refuses a sequence length whose attention cannot fit this machine:
    each layer keeps batch x heads x length^2 float32 scores, probabilities
    and their gradient for the backward pass (a lower bound: the rest of
    the activations come on top)."""
    memory = machine_memory()
    needed = (
        3 * 4 * model.num_layers * batch_size * model.num_heads
        * sequence_length**2
    )  # fmt: skip
    if memory and needed > memory:
        raise UsageError(
            f"--sequence-length: {sequence_length} tokens in batches of "
            f"{batch_size} need about {needed / 1e9:,.0f} GB for attention "
            f"alone, more than this machine's {memory / 1e9:,.1f} GB"
        )


DATA_FORMATS = ("auto", *EXAMPLE_FORMATS, "jsonl", "hf")
FINETUNE_METRICS = ("accuracy", "macro_f1", "mcc")


@dataclass
class FinetuneConfig(_Config):
    """Fine-tuning a classifier: data, optimisation and bookkeeping."""

    model: str | None = option(
        None, "pretraining run or converted model directory to start from"
    )
    from_scratch: str | None = option(
        None,
        "start from random weights of this size instead of --model, "
        "with a WordPiece vocabulary trained on the training texts",
        choices=tuple(SIZES),
    )
    train: str | None = option(
        None,
        "training data: .tsv/.csv/.jsonl, an emotion-style "
        "text;label file, a folder of <label>/*.txt, or (--data-format hf) "
        "a datasets name[:split]",
    )
    validation: str | None = option(
        None, "validation data (default: a stratified share of --train)"
    )
    test: str | None = option(None, "test data, scored with the best epoch")
    output_dir: str | None = option(
        None, "classifier directory to write; rerun the same command to resume"
    )
    data_format: str = option(
        "auto",
        "how to read the data files (auto: by extension; a folder: folder)",
        choices=DATA_FORMATS,
    )
    text_column: str = option("text", "column (or JSON field) of the text")
    text_pair_column: str | None = option(
        None, "column of the second text of sentence-pair tasks"
    )
    label_column: str = option("label", "column (or JSON field) of the label")
    columns: str | None = columns_option()
    hf_config: str | None = option(None, "hf: dataset configuration name")
    holdout_fraction: float = option(
        0.1,
        "share of --train held out (stratified) without --validation",
        above=0,
        below=1,
    )
    max_examples: int | None = option(
        None,
        "use a seeded random sample of at most this many examples "
        "per file (quick runs)",
        min=1,
    )
    max_length: int = option(
        128,
        "tokens per text (pair) including [CLS]/[SEP]; longer is truncated",
        min=4,
    )
    truncation: str = option(
        "head",
        "which tokens of a long text to keep",
        choices=("head", "tail", "head+tail"),
    )
    bucketing: bool = option(
        True,
        "batch texts of similar length and pad per batch (--no-"
        "bucketing pads every batch to --max-length)",
    )
    batch_size: int = option(32, "examples per batch", min=1)
    epochs: int = option(
        3, "passes over the training set (with --patience: the most)", min=1
    )
    patience: int | None = option(
        None,
        "stop once this many epochs in a row bring no better validation "
        "--metric (early stopping; the best epoch is kept and tested)",
        min=1,
    )
    learning_rate: float = option(2e-5, "peak learning rate", above=0)
    warmup_ratio: float = warmup_ratio_option()
    weight_decay: float = weight_decay_option()
    adam_epsilon: float = option(1e-6, "AdamW epsilon", above=0)
    clipnorm: float = clipnorm_option()
    dropout: float = option(
        0.1, "dropout on the pooled [CLS] vector", min=0, below=1
    )
    metric: str = option(
        "accuracy",
        "validation metric that picks the best epoch",
        choices=FINETUNE_METRICS,
    )
    vocab_size: int = option(
        8000,
        "--from-scratch: WordPiece vocabulary size",
        min=10,
        max=SIZE_LIMITS["vocabulary_size"],
    )
    precision: str = precision_option()
    jit_compile: str = jit_compile_option()
    strategy: str = strategy_option(multi_worker=False)
    seed: int = option(
        0,
        "seed for the split, batch order and weights",
        min=0,
        below=SEED_LIMIT,
    )
    backup_every: int = option(
        0, "steps between resume backups (0: at each epoch's end)", min=0
    )
    overwrite: bool = option(False, OVERWRITE_HELP)

    def _cross_checks(self) -> None:
        if (self.model is None) == (self.from_scratch is None):
            raise UsageError(
                "--model: give a model directory or "
                "--from-scratch SIZE (one of them)"
            )
        for name in ("train", "output_dir"):
            if getattr(self, name) is None:
                raise UsageError(f"{flag_name(name)}: is required")


@dataclass
class AdaptConfig(_Config):
    """Task-adaptive pretraining before fine-tuning (`kerasbert.adapt`):
    masked LM (+ NSP) on the texts of --train, labels unused."""

    unlabelled: str | None = option(
        None,
        "texts to adapt on instead of --train's (labels, if any, unused): "
        "a file or folder in one of --train's formats, read the same way",
    )
    adapt_steps: int = option(
        300,
        "pretraining steps on the --unlabelled (default: --train) texts "
        "before fine-tuning",
        min=1,
    )
    head_steps: int = option(
        100,
        "steps first that train only the MLM/NSP heads --model lacks, "
        "its encoder frozen (0: none; skipped when it has both heads)",
        min=0,
    )
    adapt_learning_rate: float = option(
        5e-5, "peak learning rate of the adaptation", above=0
    )
    head_learning_rate: float = option(
        1e-3, "peak learning rate of the head warm-up", above=0
    )
    adapt_batch_size: int = option(32, "sequences per adaptation step", min=1)
    adapt_sequence_length: int = option(
        128, "tokens per adaptation sequence (A and B together)", min=8
    )
    nsp: bool = nsp_option()
    packing: str = packing_option()
