"""Translate texts with a SavedModel written by `export_translator`.

Needs TensorFlow only, never keras_transformer: the export carries the model,
the tokenizers and the decoding loop.

    python scripts/serve.py saved_models/dates "5 March 2021" "March 6, 2020"
    printf '5 March 2021\\nMarch 6, 2020\\n' | python scripts/serve.py saved_models/dates
    python scripts/serve.py --beam saved_models/dates "5 March 2021"
    python scripts/serve.py --adapter dmy saved_models/multi "5 March 2021"

`--adapter NAME` translates with one of the named LoRA adapters of an export
made from a translator with adapters (greedy; "" is the base).

Prints one translation per input, in order. Without texts on the command
line, every line of stdin is one text (an empty line gives an empty line).
"""

import argparse
import os
import re
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402


def build_parser():
    parser = argparse.ArgumentParser(prog="serve.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("export_dir", help="folder written by export_translator")
    parser.add_argument(
        "texts", nargs="*", help="texts to translate; default: lines of stdin"
    )
    parser.add_argument(
        "--beam", action="store_true", help="beam search instead of greedy"
    )
    parser.add_argument(
        "--batch_size", type=int, default=64, help="texts per call (default 64)"
    )
    parser.add_argument(
        "--adapter", help="named LoRA adapter of the export to translate with"
    )
    return parser


def error(message):
    """Exits argparse-style: one line `serve.py: error: ...`, status 2."""
    build_parser().error(message)


def parse_args(argv):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch_size must be positive, got {args.batch_size}")
    if args.adapter is not None and args.beam:
        parser.error("--adapter: adapters are served greedily; drop --beam")
    return args


def adapter_translate(translator, export_dir, name):
    """texts -> translations with adapter `name` (serving_default's route)."""
    signature = translator.signatures["serving_default"]
    if "adapter" not in signature.structured_input_signature[1]:
        raise SystemExit(f"error: the export at {export_dir!r} serves no adapters.")

    def translate(texts):
        names = tf.fill(tf.shape(texts), name)
        return signature(texts=texts, adapter=names)["translations"]

    return translate


def load(export_dir):
    if not os.path.isdir(export_dir):
        error(f"export_dir: no such folder: {export_dir}")
    if not tf.saved_model.contains_saved_model(export_dir):
        # Translator.export writes version folders: name the newest.
        versions = sorted(
            (int(name) for name in os.listdir(export_dir) if name.isdigit()), reverse=True
        )
        hint = (
            f"; it holds versions {', '.join(map(str, versions))}: pass "
            f"{os.path.join(export_dir, str(versions[0]))}"
            if versions
            else ""
        )
        error(f"export_dir: {export_dir!r} is not a SavedModel folder{hint}")
    try:
        translator = tf.saved_model.load(export_dir)
    except (OSError, ValueError, tf.errors.OpError) as failure:
        error(f"export_dir: cannot load the SavedModel at {export_dir!r}: {failure}")
    if not hasattr(translator, "translate"):
        error(
            f"export_dir: the SavedModel at {export_dir!r} has no translate "
            "endpoint; write it with "
            "keras_transformer.translation.export.export_translator"
        )
    return translator


def read_stdin_lines():
    # Bytes, not str: invalid UTF-8 reaches the tokenizer, which replaces it.
    return [line.rstrip(b"\r\n") for line in sys.stdin.buffer]


def failed_check(message):
    """The export's own words from a failed graph assertion, if it is one."""
    match = re.search(r"assertion failed: \[(.*?)\] \[", message, re.DOTALL)
    return match.group(1).replace("\\'", "'") if match else message


def main(argv=None):
    args = parse_args(argv)
    translator = load(args.export_dir)
    translate = translator.translate_beam if args.beam else translator.translate
    if args.adapter is not None:
        translate = adapter_translate(translator, args.export_dir, args.adapter)
    texts = [text.encode("utf-8", "surrogateescape") for text in args.texts]
    if not args.texts:
        texts = read_stdin_lines()
    for start in range(0, len(texts), args.batch_size):
        batch = tf.constant(texts[start : start + args.batch_size], dtype=tf.string)
        try:
            translations = translate(batch).numpy()
        except tf.errors.InvalidArgumentError as failure:
            error(failed_check(failure.message))
        for translation in translations:
            print(translation.decode("utf-8", "replace"), flush=True)


if __name__ == "__main__":
    main()
