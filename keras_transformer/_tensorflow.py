"""TensorFlow for the modules bound to it, with an install hint if missing.

The layers and the model run on any Keras backend; the modules that need
TensorFlow itself (in-graph tokenizers and `tf.data` pipelines, SavedModel
export, checkpointing, `tf.distribute`, the Translator) import it through
`import_tensorflow`, so that without it they raise an `ImportError` saying
what to install, however they are imported.
"""

import importlib

TENSORFLOW_REQUIREMENT = "tensorflow>=2.21,<2.22"

# Why a module needs TensorFlow, for the error raised when it is missing.
_USES = {
    "keras_transformer.checkpointing": "tf.train.Checkpoint",
    "keras_transformer.data": "in-graph tokenizers and tf.data pipelines",
    "keras_transformer.distribute": "tf.distribute strategies",
    "keras_transformer.translation": "in-graph tokenizers and SavedModel export",
}


def missing_tensorflow_error(module_name):
    """The `ImportError` for `module_name` used without TensorFlow."""
    package = ".".join(module_name.split(".")[:2])
    uses = _USES.get(module_name) or _USES.get(package, "its TensorFlow-bound parts")
    return ImportError(
        f"{package} needs TensorFlow ({uses}), which is not installed. Install "
        f"it with `pip install '{TENSORFLOW_REQUIREMENT}'`. The layers and the "
        "model itself run on any Keras backend without it (see the README's "
        "Backends section)."
    )


def is_missing_tensorflow(error):
    """Whether a `ModuleNotFoundError` is TensorFlow's absence."""
    return (error.name or "").split(".")[0] == "tensorflow"


def import_tensorflow(module_name):
    """Returns the `tensorflow` module for `module_name` (its `__name__`)."""
    try:
        return importlib.import_module("tensorflow")
    except ModuleNotFoundError as error:
        if not is_missing_tensorflow(error):
            raise
        raise missing_tensorflow_error(module_name) from error
