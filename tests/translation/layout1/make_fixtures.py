"""Writes the first-layout fixtures of `test_translator.py`'s migration tests.

The files in this folder were written by the Translator of the first layout,
which *was* its network (`class Translator(AdapterMethods, Transformer)`,
main at commit f78f2cb), so they hold what files saved by that version hold:

- `translator.keras`: a tiny word-tokenizer translator (hidden_dim 8),
  trained briefly, compiled, with one trained adapter "dogs" (inactive);
- `dogs.npz`: that adapter, written by `save_adapter`;
- `expected.json`: what that version computed from them: the translations
  of `TEXTS` by the base and with "dogs" active, and the logits of `INPUTS`.

They were made once, with that version's code, by

    git worktree add /tmp/layout1 f78f2cb
    cd /tmp/layout1 && PYTHONPATH=$PWD python \
        <this repository>/tests/translation/layout1/make_fixtures.py \
        <this repository>/tests/translation/layout1

and are never rewritten by the current code: they stand for files users
already have.
"""

import json
import os
import sys
import zipfile

import keras
import numpy as np

SOURCES = ["one", "two", "three", "four", "one two", "two three", "three four",
           "four one", "one one", "two two"]  # fmt: skip
TARGETS = ["eins", "zwei", "drei", "vier", "eins zwei", "zwei drei",
           "drei vier", "vier eins", "eins eins", "zwei zwei"]  # fmt: skip
# The "dogs" domain: the same sources, every target ending in "hund".
DOG_TARGETS = [target + " hund" for target in TARGETS]
TEXTS = ["one", "two three", "four one", "three"]
# Ids of the logits compared (source word ids 4.., target BOS 2 first).
INPUTS = {"source_ids": [[4, 5, 0], [6, 7, 4]], "target_ids": [[2, 5, 6], [2, 4, 0]]}


def main(folder):
    from keras_transformer.translation import Translator

    keras.utils.set_random_seed(3)
    # The target vocabulary must hold "hund" for the adapter's domain.
    translator = Translator.from_texts(
        SOURCES + SOURCES, TARGETS + DOG_TARGETS, tokenizer="word",
        num_encoder_layers=1, num_decoder_layers=1, hidden_dim=8, num_heads=2,
        intermediate_dim=16, dropout=0.0,
    )  # fmt: skip
    translator.compile(learning_rate=2e-2, warmup_steps=2)
    translator.fit(SOURCES, TARGETS, epochs=30, batch_size=5, verbose=0)
    translator.add_adapter("dogs", rank=2, alpha=4)
    translator.set_adapter("dogs")
    translator.compile(learning_rate=5e-2, warmup_steps=2)
    translator.fit(SOURCES, DOG_TARGETS, epochs=30, batch_size=5, verbose=0)
    expected = {"inputs": INPUTS}
    inputs = {name: np.array(ids, "int32") for name, ids in INPUTS.items()}
    for name in ("dogs", None):
        translator.set_adapter(name)
        key = name or "base"
        expected[f"{key}_translations"] = translator.translate(TEXTS)
        logits = keras.ops.convert_to_numpy(translator(inputs, training=False))
        expected[f"{key}_logits"] = logits.astype("float32").tolist()
    translator.save(os.path.join(folder, "translator.keras"))
    translator.save_adapter("dogs", os.path.join(folder, "dogs.npz"))
    for name in ("translator.keras", "dogs.npz"):
        _deflate(os.path.join(folder, name))
    with open(os.path.join(folder, "expected.json"), "w", encoding="utf-8") as file:
        json.dump(expected, file, indent=1)


def _deflate(path):
    """Rewrites the zip archive at `path` with its members deflated (Keras and
    NumPy store them uncompressed: 200 KB of mostly HDF5 padding here). The
    members stay byte for byte what that version wrote."""
    with zipfile.ZipFile(path) as archive:
        members = [(info.filename, archive.read(info)) for info in archive.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for name, payload in members:
            archive.writestr(name, payload)


if __name__ == "__main__":
    main(sys.argv[1])
