"""The package's public surface and its backend-agnostic promise."""

import ast
import configparser
import importlib.metadata
import pathlib
import re
import sys

import pytest

import keras_transformer
from keras_transformer import layers

LAYERS_DIR = pathlib.Path(keras_transformer.__file__).parent / "layers"


def test_version_is_a_release_string():
    major, minor, patch = keras_transformer.__version__.split(".")
    assert all(part.isdigit() for part in (major, minor, patch))


def _is_tensorflow_backend_check(node):
    return isinstance(node, ast.If) and ast.unparse(node.test) in (
        "keras.backend.backend() == 'tensorflow'",
        "backend.backend() == 'tensorflow'",
    )


def _unguarded_imports(node, guarded=False):
    """(line, module) of every import outside a TensorFlow-backend branch."""
    if isinstance(node, ast.Import) and not guarded:
        yield from ((node.lineno, alias.name) for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and not guarded:
        yield node.lineno, node.module or ""
    if _is_tensorflow_backend_check(node):
        for child in node.body:
            yield from _unguarded_imports(child, guarded=True)
        for child in node.orelse:
            yield from _unguarded_imports(child, guarded)
        return
    for child in ast.iter_child_nodes(node):
        yield from _unguarded_imports(child, guarded)


def test_layers_import_tensorflow_only_on_its_backend_so_every_backend_works():
    offenders = []
    for source in sorted(LAYERS_DIR.rglob("*.py")):
        tree = ast.parse(source.read_text(), filename=str(source))
        for line, name in _unguarded_imports(tree):
            if name.split(".")[0] in ("tensorflow", "tf_keras"):
                offenders.append(f"{source.name}:{line} imports {name}")
    assert offenders == []


def test_every_public_layer_is_registered_for_serialization():
    import keras

    for name in layers.__all__ if hasattr(layers, "__all__") else dir(layers):
        obj = getattr(layers, name)
        if isinstance(obj, type) and issubclass(obj, keras.layers.Layer):
            registered = keras.saving.get_registered_name(obj)
            assert registered == f"keras_transformer>{name}", registered


def test_modules_load_on_first_attribute_access_and_are_listed():
    for name in ("checkpointing", "data", "decoding", "distribute", "translation"):
        assert name in dir(keras_transformer)
        module = getattr(keras_transformer, name)
        assert module.__name__ == f"keras_transformer.{name}"


def test_the_text_task_modules_still_resolve_at_their_old_package_root_names():
    for name in ("export", "recipes"):
        assert name in dir(keras_transformer)
        module = getattr(keras_transformer, name)
        assert module.__name__ == f"keras_transformer.translation.{name}"


def test_an_unknown_attribute_raises_attribute_error():
    with pytest.raises(AttributeError, match="has no attribute 'layer'"):
        keras_transformer.layer


REPOSITORY = pathlib.Path(__file__).parent.parent


def _requirement_names(lines):
    """Distribution names of requirement lines, normalised as pip does."""
    names = set()
    for line in lines.splitlines():
        line = line.split("#")[0].strip()
        if line:
            name = re.split(r"[\[<>=!~; ]", line, maxsplit=1)[0]
            names.add(re.sub(r"[-_.]+", "-", name).lower())
    return names


def _third_party_imports(folder):
    """Top-level names of every module the files under `folder` import."""
    names = set()
    for source in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(), filename=str(source))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names.add(node.module.split(".")[0])
    return {
        name
        for name in names
        if name not in sys.stdlib_module_names
        and name not in ("keras_transformer", "tests")
    }


def test_every_module_the_tests_import_is_installed_by_setup_cfg():
    """A fresh `pip install -e ".[test]"` must give the tests all they import
    (the torch extra is the optional backend; its tests skip without it)."""
    config = configparser.ConfigParser()
    config.read(REPOSITORY / "setup.cfg")
    declared = _requirement_names(config["options"]["install_requires"])
    extras = config["options.extras_require"]
    declared |= _requirement_names(extras["test"]) | _requirement_names(extras["torch"])
    distributions = importlib.metadata.packages_distributions()
    missing = {}
    for name in _third_party_imports(REPOSITORY / "tests"):
        providers = {
            re.sub(r"[-_.]+", "-", dist).lower()
            for dist in distributions.get(name, [name])
        }
        if not providers & declared:
            missing[name] = sorted(providers)
    assert missing == {}, (
        f"tests import {sorted(missing)} (from the distributions {missing}), which "
        "setup.cfg installs neither as a dependency nor in the test extra: add them "
        "to [options.extras_require] test."
    )
    # The README's test command runs pytest with -n (pytest-xdist).
    assert "pytest-xdist" in _requirement_names(extras["test"])


def test_compat_imports_tensorflow_only_inside_functions():
    # The layers import _compat and must load without TensorFlow.
    source = pathlib.Path(keras_transformer.__file__).parent / "_compat.py"
    tree = ast.parse(source.read_text(), filename=str(source))
    module_level = [
        alias.name if isinstance(node, ast.Import) else node.module
        for node in tree.body
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in (node.names if isinstance(node, ast.Import) else [None])
    ]
    bound = [
        name
        for name in module_level
        if name.split(".")[0] == "tensorflow" or "backend.tensorflow" in name
    ]
    assert module_level and bound == []


# The floors of the package, bottom up: a module imports only from its own
# floor or those below (the utilities outside them, such as `validation` or
# `data`, sit below the text task).
FLOORS = ("layers", "models", "decoding", "translation")


def _floor(module_name):
    parts = module_name.split(".")
    if parts[0] != "keras_transformer" or len(parts) < 2:
        return None
    return FLOORS.index(parts[1]) if parts[1] in FLOORS else None


def _package_imports(tree):
    """Every `keras_transformer...` name a module's import statements name."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def test_imports_run_one_way_from_the_layers_up_to_the_text_task():
    package = pathlib.Path(keras_transformer.__file__).parent
    upward = []
    for source in sorted(package.rglob("*.py")):
        module = ".".join(source.relative_to(package.parent).with_suffix("").parts)
        floor = _floor(module)
        # A module outside the floors may use the lower three, not the text task.
        ceiling = FLOORS.index("decoding") if floor is None else floor
        for name in _package_imports(ast.parse(source.read_text())):
            if (_floor(name) or 0) > ceiling:
                upward.append(f"{module} imports {name}")
    assert upward == []


IMPORT_THE_PACKAGE = """
import json, sys
import keras_transformer
print(json.dumps({
    "modules": sorted(m for m in sys.modules if m.startswith("keras_transformer")),
    "tensorflow": "tensorflow" in sys.modules,
}))
"""


def _import_the_package(backend):
    import json
    import os
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", IMPORT_THE_PACKAGE],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _binds_tensorflow(module_name):
    """Whether the module imports TensorFlow when it is imported."""
    path = pathlib.Path(keras_transformer.__file__).parent.joinpath(
        *module_name.split(".")[1:]
    )
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    return "import_tensorflow(__name__)" in path.read_text()


@pytest.mark.slow
def test_importing_the_package_imports_no_tensorflow_bound_module():
    pytest.importorskip("tensorflow")
    loaded = _import_the_package("tensorflow")["modules"]
    assert "keras_transformer.models" in loaded
    assert [name for name in loaded if _binds_tensorflow(name)] == []
    # The Translator, the text pipeline and export come on first use only.
    for lazy in ("keras_transformer.translation", "keras_transformer.data",
                 "keras_transformer.decoding"):
        assert lazy not in loaded


def test_on_jax_importing_the_package_imports_no_tensorflow_although_installed():
    pytest.importorskip("tensorflow")
    pytest.importorskip("jax")
    assert _import_the_package("jax")["tensorflow"] is False
