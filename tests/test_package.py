"""The package's public surface and its backend-agnostic promise."""

import ast
import pathlib

import keras_transformer
from keras_transformer import layers

LAYERS_DIR = pathlib.Path(keras_transformer.__file__).parent / "layers"


def test_version_is_a_release_string():
    major, minor, patch = keras_transformer.__version__.split(".")
    assert all(part.isdigit() for part in (major, minor, patch))


def test_layers_never_import_tensorflow_so_every_keras_backend_works():
    offenders = []
    for source in sorted(LAYERS_DIR.rglob("*.py")):
        tree = ast.parse(source.read_text(), filename=str(source))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                if name.split(".")[0] in ("tensorflow", "tf_keras"):
                    offenders.append(f"{source.name}:{node.lineno} imports {name}")
    assert offenders == []


def test_every_public_layer_is_registered_for_serialization():
    import keras

    for name in layers.__all__ if hasattr(layers, "__all__") else dir(layers):
        obj = getattr(layers, name)
        if isinstance(obj, type) and issubclass(obj, keras.layers.Layer):
            registered = keras.saving.get_registered_name(obj)
            assert registered == f"keras_transformer>{name}", registered
