"""Export a trained translator as a self-contained TensorFlow SavedModel.

`export_translator` bundles the model, both tokenizers and the decoding loops
into one SavedModel, so serving needs TensorFlow only (no keras_transformer):

```python
translator = tf.saved_model.load(export_dir)   # or load_translator(export_dir)
translator.translate(tf.constant(["5 March 2021"]))  # [b"2021-03-05"]
```

Endpoints of the export:

- `serve(source_ids, target_ids)`: int32 `[batch, length]` each, padded with
  0 (`target_ids` starts with BOS) -> float32 logits
  `[batch, target_length, target_vocabulary_size]`, the model's forward pass.
- `translate(texts)`: tf.string `[batch]` -> tf.string `[batch]`, greedy
  decoding.
- `translate_beam(texts)`: likewise with beam search (the `beam_size` and
  `length_penalty` given at export).
- `serving_default`: the `translate` computation as a signature with named
  tensors, `{"texts"} -> {"translations"}`, for TF Serving and
  `saved_model_cli`.

An export of a translator with named LoRA adapters
(`keras_transformer.translation.adapters`) serves the base from `serve`,
`translate` and `translate_beam` as above, and every adapter from
`serving_default`, which then takes `{"texts", "adapter"}`: tf.string
`[batch]` each, one adapter name per text, `""` for the base (TF Serving
signatures have no optional inputs, so "no adapter" is spelled `""`). The
choice is per text, as vLLM and S-LoRA choose per request: REST clients send
`{"instances": [{"texts": "a text", "adapter": "dogs"},
{"texts": "another", "adapter": ""}]}` and one server batch may mix adapters.
The export holds one greedy decoding loop per adapter (and one for the base);
a batch is split by adapter name, each group decoded by its adapter's loop
with the adapter's `(A, B)` pairs fixed in it, and the translations put back
in order. A batch of one adapter runs one loop, at the cost of the adapter's
low-rank products; a mixed batch runs one loop per adapter present, one after
the other. An unknown name fails the call with an `InvalidArgumentError`
naming the adapters the export serves.

How `translate` and `translate_beam` treat awkward inputs:

- Empty and whitespace-only texts translate to `""`: they have no source
  tokens, and whatever the decoder makes of an all-padding source is
  replaced by the empty string (other texts of the batch are unaffected).
- A text with more tokens than the model's maximum source length fails the
  whole call with an `InvalidArgumentError` that states the limit. Texts are
  never truncated silently: split them before translating.
- Pieces missing from the source vocabulary become [UNK] and the text is
  still translated.
- Bytes that are not valid UTF-8 are replaced by U+FFFD (then [UNK] unless
  the vocabulary has it) and the text is still translated.
- A batch is padded to its longest text; padding is masked, so each text is
  translated as it would be alone.
- Translations stop at [EOS] or after `max_decode_length` tokens.

The directory also holds `assets.extra/translator.json`: the limits, decoding
settings and tokenizer configs the export was made with.
"""

import contextlib
import json
import os
import re

import keras

from keras_transformer._tensorflow import import_tensorflow
from keras_transformer import _files, decoding
from keras_transformer._version import __version__
from keras_transformer import validation
from keras_transformer.models import transformer
from keras_transformer.translation import text

tf = import_tensorflow(__name__)

METADATA_PATH = os.path.join("assets.extra", "translator.json")
ENDPOINTS = ("serve", "translate", "translate_beam", "serving_default")


def new_version_folder(path, version=None):
    """The version folder `path/<version>/` an export is to be written to.

    TF Serving serves the largest integer folder of a model's base folder,
    so a new export takes the next integer, and an existing version is never
    overwritten.

    Args:
        path: str. The model's base folder (holding version folders).
        version: int or None. None takes the next integer after the largest
            existing one (1 for a new folder).

    Returns:
        str, `path/<version>`, which does not exist yet.
    """
    base = os.fspath(path)
    if os.path.exists(base) and not os.path.isdir(base):
        raise ValueError(
            f"Cannot export to {base!r}: it exists and is not a folder."
        )
    existing = (
        [int(name) for name in os.listdir(base) if re.fullmatch(r"[0-9]+", name)]
        if os.path.isdir(base)
        else []
    )
    if version is None:
        version = max(existing, default=0) + 1
    validation.check_positive_int("version", version)
    if version in existing:
        raise ValueError(
            f"Received version={version}, but {os.path.join(base, str(version))!r} "
            "already exists; versions are never overwritten. Pass another "
            "version or version=None for the next one."
        )
    return os.path.join(base, str(version))


def export_translator(
    model,
    source_tokenizer,
    target_tokenizer,
    export_dir,
    max_decode_length=None,
    beam_size=4,
    length_penalty=0.6,
    jit_compile=False,
    adapters=None,
):
    """Writes a SavedModel that translates strings, atomically.

    The SavedModel is written into a temporary folder beside `export_dir` and
    renamed into place once complete (`keras_transformer._files`). An
    existing export at `export_dir` is replaced only then; if anything fails
    it is left as it was. Missing parent folders are created.

    Args:
        model: keras.Model from `keras_transformer.models.build_transformer`
            (built, e.g. trained or reloaded).
        source_tokenizer: `keras_transformer.data.Tokenizer` for the inputs.
        target_tokenizer: `keras_transformer.data.Tokenizer` for the outputs.
        export_dir: str or path. Where the SavedModel goes.
        max_decode_length: int or None. Most tokens generated per text;
            defaults to the model's maximum target length.
        beam_size: int. Beams of `translate_beam`.
        length_penalty: float. Length-normalisation exponent of
            `translate_beam`.
        jit_compile: bool. Whether the decoding loops of `translate` and
            `translate_beam` are XLA programs (saved as functions that must
            be compiled; the tokenizers stay outside them). Sources are then
            padded to the model's maximum source length, so each batch size
            compiles once, on its first request (seconds); later requests
            decode several times faster on a CPU (see docs/benchmarks.md).
            The server's TensorFlow must include XLA (pip's does).
        adapters: None, or `(names, using)` for a translator with named
            adapters (`keras_transformer.translation.adapters.export_adapters`):
            `using(name)` is a context in which the model computes with
            adapter `name` (None: the base). `serving_default` then takes an
            adapter name per text (see the module docstring).

    Returns:
        `export_dir`, as given.

    Example:

    ```python
    export_translator(model, source_tokenizer, target_tokenizer,
                      "saved_models/dates")
    translator = load_translator("saved_models/dates")
    translator.translate(tf.constant(["5 March 2021"]))
    ```
    """
    transformer_layers = transformer.model_layers(model)
    max_target_length = transformer_layers.max_target_length
    if max_decode_length is None:
        max_decode_length = max_target_length
    validation.check_positive_int("max_decode_length", max_decode_length)
    if max_decode_length > max_target_length:
        raise ValueError(
            "Received an invalid value for argument max_decode_length, "
            f"expected at most the model's maximum target length "
            f"{max_target_length}. Received: max_decode_length="
            f"{max_decode_length}"
        )
    # The decoders check these too, but only when the endpoints are traced,
    # which happens while writing; failing here saves that work.
    beam_size = validation.check_positive_int("beam_size", beam_size)
    length_penalty = validation.check_non_negative_float(
        "length_penalty", length_penalty
    )
    jit_compile = validation.check_bool("jit_compile", jit_compile)
    text.check_tokenizers_fit(
        transformer_layers, source_tokenizer, target_tokenizer
    )
    final_dir = os.path.abspath(os.fspath(export_dir))
    if os.path.exists(final_dir) and not os.path.isdir(final_dir):
        raise ValueError(
            f"Cannot export to {final_dir!r}: it exists and is not a folder."
        )

    adapter_names, using = adapters if adapters is not None else ([], None)
    # The base endpoints are traced while the archive is written, so the
    # model computes without any adapter from here to the end.
    with using(None) if using is not None else contextlib.nullcontext():
        _write_export(
            model,
            transformer_layers,
            source_tokenizer,
            target_tokenizer,
            final_dir,
            dict(
                max_decode_length=max_decode_length,
                beam_size=beam_size,
                length_penalty=length_penalty,
                jit_compile=jit_compile,
                adapters=(adapter_names, using),
            ),
        )
    return export_dir


def _write_export(
    model, transformer_layers, source_tokenizer, target_tokenizer, final_dir, settings
):
    adapter_names = settings["adapters"][0]
    metadata = {
        "keras_transformer_version": __version__,
        "endpoints": list(ENDPOINTS),
        "max_source_length": transformer_layers.max_source_length,
        "max_target_length": transformer_layers.max_target_length,
        "max_decode_length": settings["max_decode_length"],
        "beam_size": settings["beam_size"],
        "length_penalty": float(settings["length_penalty"]),
        "jit_compile": settings["jit_compile"],
        "source_tokenizer": _tokenizer_record(source_tokenizer),
        "target_tokenizer": _tokenizer_record(target_tokenizer),
    }
    if adapter_names:
        metadata["adapters"] = list(adapter_names)
    # The folder the export is staged in is made first: a parent that is a
    # file or cannot be written fails here, before any endpoint is traced.
    with _files.staged_folder(final_dir, "the export") as staging:
        archive = _build_archive(
            model, transformer_layers, source_tokenizer, target_tokenizer, **settings
        )
        archive.write_out(staging, verbose=False)
        _write_metadata(staging, metadata)


def load_translator(path):
    """Loads an export of `export_translator` with `tf.saved_model.load`.

    Args:
        path: str or path. The export folder.

    Returns:
        The loaded SavedModel, with the endpoints `serve`, `translate`,
        `translate_beam` and `serving_default` (see the module docstring).

    Raises:
        ValueError: `path` is missing, is not a SavedModel, or is a SavedModel
            that `export_translator` did not write.
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise ValueError(f"No translator export at {path!r}: no such folder.")
    if not tf.saved_model.contains_saved_model(path):
        raise ValueError(
            f"{path!r} is not a SavedModel (it has no saved_model.pb). Write one "
            "with keras_transformer.translation.export.export_translator."
        )
    if not os.path.isfile(os.path.join(path, METADATA_PATH)):
        raise ValueError(
            f"{path!r} is a SavedModel but not a translator export (it has no "
            f"{METADATA_PATH}). Write one with "
            "keras_transformer.translation.export.export_translator."
        )
    try:
        return tf.saved_model.load(path)
    except (OSError, ValueError, tf.errors.OpError) as error:
        raise ValueError(
            f"Could not load the SavedModel at {path!r}: {error}"
        ) from error


def _tokenizer_record(tokenizer):
    return {"class_name": type(tokenizer).__name__, "config": tokenizer.get_config()}


def _build_archive(
    model,
    transformer_layers,
    source_tokenizer,
    target_tokenizer,
    max_decode_length,
    beam_size,
    length_penalty,
    jit_compile,
    adapters,
):
    max_source_length = transformer_layers.max_source_length
    max_target_length = transformer_layers.max_target_length
    archive = keras.export.ExportArchive()
    # Tracking the model (not only letting the endpoints capture its
    # variables) is what lets saved_model_cli and TF Serving find them.
    archive.track(model)
    archive.track(source_tokenizer)
    archive.track(target_tokenizer)

    def serve(source_ids, target_ids):
        checks = [
            _assert_fits(source_ids, max_source_length, "source_ids", "source"),
            _assert_fits(target_ids, max_target_length, "target_ids", "target"),
        ]
        with tf.control_dependencies(checks):
            inputs = {
                "source_ids": tf.identity(source_ids),
                "target_ids": tf.identity(target_ids),
            }
        return model(inputs, training=False)

    special_ids = {"bos_id": target_tokenizer.bos_id, "eos_id": target_tokenizer.eos_id}

    def translator(sampler):
        def decode(source_ids):
            return sampler(model, source_ids, max_decode_length, **special_ids)

        if jit_compile:
            decode = tf.function(decode, jit_compile=True, autograph=False)
        return text.text_decoder(
            model,
            source_tokenizer,
            target_tokenizer,
            decode,
            pad_to_max_source_length=jit_compile,
        )

    texts_spec = tf.TensorSpec([None], tf.string)
    archive.add_endpoint(
        "serve",
        serve,
        input_signature=[
            tf.TensorSpec([None, None], tf.int32, name="source_ids"),
            tf.TensorSpec([None, None], tf.int32, name="target_ids"),
        ],
    )
    translate = archive.add_endpoint(
        "translate",
        translator(decoding.GreedySampler()),
        input_signature=[texts_spec],
    )
    archive.add_endpoint(
        "translate_beam",
        translator(decoding.BeamSampler(beam_size, length_penalty)),
        input_signature=[texts_spec],
    )
    adapter_names, using = adapters
    if not adapter_names:
        archive.add_endpoint(
            "serving_default",
            lambda texts: {"translations": translate(texts)},
            input_signature=[tf.TensorSpec([None], tf.string, name="texts")],
        )
        return archive
    decoders = []
    for name in [None, *adapter_names]:
        # Traced now, while `using` holds: the adapter is fixed in the loop.
        with using(name):
            decoders.append(
                tf.function(
                    translator(decoding.GreedySampler()),
                    input_signature=[texts_spec],
                    autograph=False,
                ).get_concrete_function()
            )
    route = _adapter_router(["", *adapter_names], decoders)
    archive.add_endpoint(
        "serving_default",
        lambda texts, adapter: {"translations": route(texts, adapter)},
        input_signature=[
            tf.TensorSpec([None], tf.string, name="texts"),
            tf.TensorSpec([None], tf.string, name="adapter"),
        ],
    )
    return archive


def _adapter_router(names, decoders):
    """texts, adapter names `[batch]` -> translations, each text decoded by
    the decoder of its adapter (`names[i]` -> `decoders[i]`)."""
    # No quotes: the Assert op escapes them in its message.
    known = ", ".join(names[1:]) + " and the base (an empty name)"

    def route(texts, adapter):
        matches = tf.equal(tf.expand_dims(adapter, 1), tf.constant(names)[None, :])
        found = tf.reduce_any(matches, axis=1)
        checks = [
            tf.debugging.assert_equal(
                tf.size(adapter),
                tf.size(texts),
                message="serving_default needs one adapter name per text "
                "(\"\" for the base).",
            ),
            tf.debugging.Assert(
                tf.reduce_all(found),
                [
                    f"Unknown adapter name; this export serves {known}. "
                    "Received:",
                    tf.boolean_mask(adapter, tf.logical_not(found)),
                ],
            ),
        ]
        with tf.control_dependencies(checks):
            index = tf.argmax(tf.cast(matches, tf.int32), axis=1, output_type=tf.int32)
        groups = tf.dynamic_partition(texts, index, len(names))
        positions = tf.dynamic_partition(tf.range(tf.size(texts)), index, len(names))
        translations = [
            tf.cond(
                tf.size(group) > 0,
                lambda group=group, decode=decode: decode(group),
                lambda: tf.zeros([0], tf.string),
            )
            for group, decode in zip(groups, decoders)
        ]
        return tf.dynamic_stitch(positions, translations)

    return route


def _assert_fits(ids, max_length, argument, side):
    return tf.debugging.assert_less_equal(
        tf.shape(ids)[1],
        max_length,
        message=(
            f"serve received {argument} longer than the model's maximum "
            f"{side} length of {max_length} tokens."
        ),
    )


def _write_metadata(export_dir, metadata):
    path = os.path.join(export_dir, METADATA_PATH)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as file:
        json.dump(metadata, file, ensure_ascii=False, indent=1, sort_keys=True)
