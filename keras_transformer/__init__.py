"""Keras 3 Transformer layers that train, save, export and decode.

`import keras_transformer` needs only Keras and one backend: the layers,
losses, metrics, schedules and `models` (the backbone) are written with
`keras.ops` and are imported here (so their classes are registered for
`.keras` loading). Every other module is imported on first attribute access
(PEP 562), so that the ones bound to TensorFlow (the text task in
`translation`: the `Translator`, its SavedModel `export` and `recipes`;
in-graph tokenizers and `tf.data` pipelines in `data`; `checkpointing`,
`distribute`) cost nothing, and need no TensorFlow, until used: on the JAX or PyTorch backend `import keras_transformer` imports no
TensorFlow even when it is installed. Used (or imported directly) without
TensorFlow installed, they raise an `ImportError` that says what to install
(`keras_transformer._tensorflow`). A Translator's `.keras` file loads after
`import keras_transformer` alone: `models` registers a stand-in that imports
the class on first load. `keras_transformer.export` and
`keras_transformer.recipes` name the modules of `translation` they were
before the text task moved there.
"""

import importlib

from keras_transformer._version import __version__  # noqa: F401

from keras_transformer import _tensorflow  # noqa: E402
from keras_transformer import layers  # noqa: E402,F401
from keras_transformer import losses  # noqa: E402,F401
from keras_transformer import metrics  # noqa: E402,F401
# Registers Transformer (and a stand-in for the Translator) for load_model.
from keras_transformer import models  # noqa: E402,F401
from keras_transformer import schedules  # noqa: E402,F401

# Attribute -> (module, attribute of that module or None for the module).
_LAZY = {
    "checkpointing": ("keras_transformer.checkpointing", None),
    "data": ("keras_transformer.data", None),
    "decoding": ("keras_transformer.decoding", None),
    "distribute": ("keras_transformer.distribute", None),
    "evaluation": ("keras_transformer.evaluation", None),
    "plotting": ("keras_transformer.plotting", None),
    "translation": ("keras_transformer.translation", None),
    "Translator": ("keras_transformer.translation", "Translator"),
    # Where the text task's modules were before translation/ held them.
    "export": ("keras_transformer.translation.export", None),
    "recipes": ("keras_transformer.translation.recipes", None),
}


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'keras_transformer' has no attribute {name!r}")
    module_name, attribute = _LAZY[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if not _tensorflow.is_missing_tensorflow(error):
            raise
        raise _tensorflow.missing_tensorflow_error(module_name) from error
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
