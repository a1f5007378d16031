"""Google's original BERT checkpoints (google-research/bert, TF1).

A folder with `bert_config.json`, `vocab.txt` and a TF1 checkpoint
(`bert_model.ckpt.index` + `.data-*`), read with `tf.train.load_checkpoint`
and mapped through the HF names of `names.google_name`. Optimizer slots
(`adam_m`, `adam_v`) and `global_step` in training checkpoints are ignored.
Its "gelu" is modeling.py's tanh approximation: `gelu_tanh` here.
"""

import glob
import os

from kerasbert.config import read_json_object
from kerasbert.errors import UsageError
from kerasbert.files import read_lines
from kerasbert.interop.checkpoint import Checkpoint, model_config
from kerasbert.interop.names import google_name


def is_google_folder(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "bert_config.json"))


def _checkpoint_prefix(path: str) -> str:
    preferred = os.path.join(path, "bert_model.ckpt.index")
    indexes = (
        [preferred]
        if os.path.isfile(preferred)
        else sorted(glob.glob(os.path.join(path, "*.index")))
    )
    if len(indexes) != 1:
        raise UsageError(
            f"{path}: expected one TF checkpoint (bert_model.ckpt.index), "
            f"found {len(indexes)}"
        )
    return indexes[0][: -len(".index")]


def read_google_folder(path: str) -> Checkpoint:
    import tensorflow as tf

    label = os.path.join(path, "bert_config.json")
    config = model_config(read_json_object(label, label), label, google=True)
    vocab = os.path.join(path, "vocab.txt")
    if not os.path.lexists(vocab):
        raise UsageError(f"{path}: no vocab.txt in this folder")
    tokens = read_lines(vocab, vocab)
    prefix = _checkpoint_prefix(path)
    try:
        reader = tf.train.load_checkpoint(prefix)
        names = set(reader.get_variable_to_shape_map())
    except (tf.errors.OpError, ValueError) as e:
        raise UsageError(
            f"{prefix}: cannot be read as a TF checkpoint "
            f"({str(e).splitlines()[0]})"
        ) from None

    def get(hf_name):
        name, transposed = google_name(hf_name)
        if name not in names:
            return None
        try:
            array = reader.get_tensor(name)
        except (tf.errors.OpError, IndexError) as e:  # a truncated .data
            raise UsageError(
                f"{prefix}: cannot read {name} ({str(e).splitlines()[0]})"
            ) from None
        return array.T if transposed else array

    # Google ships no tokenizer settings: an uncased vocabulary (no
    # upper-case token) means do_lower_case, which also strips accents.
    lowercase = not any(t != t.lower() for t in tokens if not t.startswith("["))
    return Checkpoint(
        label=prefix,
        config=config,
        get=get,
        has_mlm=any(n.startswith("cls/predictions/") for n in names),
        has_nsp=any(n.startswith("cls/seq_relationship/") for n in names),
        tokens=tokens,
        lowercase=lowercase,
        strip_accents=None,
    )
