"""Config fields as command-line flags, built one way for every command.

A field `batch_size` is the flag `--batch-size`; its help text and choices
come from the field's metadata in `kerasbert.config`; booleans get
`--x/--no-x`; a field's `aliases` metadata adds other spellings. Flags
default to "not given" (argparse.SUPPRESS), so a
`--config FILE.json` value survives unless the flag is given too.
"""

import argparse
import dataclasses
import os
import re
import sys
import tempfile

from kerasbert.config import field_type, flag_name, read_json_object
from kerasbert.errors import UsageError


def add_config_flags(parser, cls, names=None, title=None, narrow=None) -> None:
    """Adds a flag for each field of `cls` (or those in `names`);
    `narrow` ({field: {"choices": ..., "help": ...}}) gives a command
    that takes less of a field its own choices and help."""
    group = parser.add_argument_group(title or cls.__name__)
    defaults = cls()
    for f in dataclasses.fields(cls):
        if (names is not None and f.name not in names) or not f.metadata.get(
            "flag", True
        ):
            continue
        kind = field_type(f)
        own = {**f.metadata, **(narrow or {}).get(f.name, {})}
        spellings = (flag_name(f.name), *f.metadata.get("aliases", ()))
        kwargs = dict(
            dest=f.name,
            default=argparse.SUPPRESS,
            help=f"{own['help']} (default: {getattr(defaults, f.name)})",
        )
        if kind is bool:
            group.add_argument(
                *spellings, action=argparse.BooleanOptionalAction, **kwargs
            )
        else:
            group.add_argument(
                *spellings,
                type=kind,
                choices=own.get("choices"),
                metavar=kind.__name__.upper() if "choices" not in own else None,
                **kwargs,
            )


# absl's C++ start-up lines (TF_CPP_MIN_LOG_LEVEL does not reach them):
# its banner and "I0000 00:00:... file.cc:31] ..." records.
_ABSL_LINE = re.compile(
    r"^(WARNING: All log messages before absl::"
    r"|[IWE]\d{4} [\d:.]+ +\d+ \S+:\d+\] )"
)


def import_tensorflow_quietly() -> None:
    """Imports TensorFlow and lists its devices with stderr (file
    descriptor 2, where its C++ code writes) sent to a temp file, then
    passes on every line that is not absl start-up logging. Commands call
    it once their flags are checked, so stderr holds only their lines."""
    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()  # CUDA's probe logs here
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode("utf-8", "replace").splitlines()
            for line in lines:
                if not _ABSL_LINE.match(line):
                    print(line, file=sys.stderr)


def check_text(text: str, what: str) -> str:
    """Refuses command-line text that is not UTF-8: Python hands undecodable
    bytes over as lone surrogates, which fail deep inside the tokenizer."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise UsageError(
            f"{what}: not valid UTF-8 (byte {e.start} of "
            f"{text.encode('utf-8', 'surrogateescape')!r})"
        ) from None
    return text


def read_config_file(path: str, sections=("model", "data", "train")) -> dict:
    """A `--config` file as one flat dict of field values.

    Accepts a flat object of fields, or a run's nested `config.json`
    (`{"model": {...}, "data": {...}, "train": {...}}`), which is flattened.
    """
    values = read_json_object(path, f"--config: {path}")
    if any(isinstance(values.get(k), dict) for k in sections):
        flat = {k: v for k, v in values.items() if k not in sections}
        for part in sections:
            flat.update(values.get(part) or {})
        values = flat
    return values


def split_values(values: dict, classes: dict, extra=()) -> dict:
    """{section: {field: value}} from a flat dict of field values; keys
    that are no field of `classes` (nor in `extra`) are an error."""
    known = {
        f.name for cls in classes.values() for f in dataclasses.fields(cls)
    } | set(extra)
    unknown = sorted(set(values) - known)
    if unknown:
        raise UsageError(f"--config: unknown field(s) {', '.join(unknown)}")
    return {
        part: {
            f.name: values[f.name]
            for f in dataclasses.fields(cls)
            if f.name in values
        }
        for part, cls in classes.items()
    }
