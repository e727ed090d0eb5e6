"""Saving and loading `.keras` files: atomically, with one clear error for
every way a file is bad, and upgrading files of an older layout.

`keras.saving.load_model` answers a truncated or garbage file with "File not
found" (for a file that exists), and an archive with a missing or damaged
member with a `KeyError`, a `JSONDecodeError` or an h5py `OSError`.
`load_model` checks the archive first and turns whatever Keras raises while
reading it into a `ValueError` that names the file.

A model class whose weights moved between versions says how to read its
older files with a classmethod `upgrade_keras_file(config)` (the
`Translator`'s does); `load_model` then loads an upgraded copy, leaving the
file as it is.
"""

import contextlib
import json
import os
import posixpath
import shutil
import tempfile
import zipfile

import keras

from keras_transformer import _files, validation

# Every `.keras` archive Keras writes holds these members.
REQUIRED_MEMBERS = ("config.json", "model.weights.h5")
_CONFIG, _WEIGHTS = REQUIRED_MEMBERS


def _corrupt(path, reason):
    return ValueError(
        f"Cannot load the .keras file {path!r}: {reason}. The file is left as "
        "it is; save the model again (the library's model saves are atomic)."
    )


def keras_path(filepath):
    """The absolute path of a `.keras` file; `ValueError` for anything else.

    Args:
        filepath: str or path-like ending in `.keras`.
    """
    if not isinstance(filepath, (str, os.PathLike)):
        raise ValueError(
            "Received an invalid value for argument filepath, expected a path "
            f"to a .keras file. Received: filepath={filepath!r}"
        )
    path = os.path.abspath(os.fspath(filepath))
    if not path.endswith(".keras"):
        raise ValueError(
            "Received an invalid value for argument filepath, expected a path "
            f"ending in .keras. Received: filepath={filepath!r}"
        )
    return path


def check_keras_file(filepath):
    """Raises `ValueError` naming `filepath` unless it is a readable archive.

    Checks that the file exists, is a zip archive with the members Keras
    writes, and that its `config.json` is a JSON object. It does not read
    the weights; `load_model` reports a damaged weights file.

    Args:
        filepath: str or path of a `.keras` file.

    Returns:
        The absolute path, as a str.
    """
    return _read_checked(filepath)[0]


def _read_checked(filepath):
    """`check_keras_file`'s checks; returns (absolute path, parsed
    `config.json`), so that `load_model` reads the config once."""
    path = keras_path(filepath)
    if os.path.isdir(path):
        raise _corrupt(path, "it is a folder, not a file")
    if not os.path.isfile(path):
        raise ValueError(f"Cannot load the .keras file {path!r}: no such file.")
    if not zipfile.is_zipfile(path):
        raise _corrupt(path, "it is not a zip archive (truncated or not a .keras file)")
    try:
        with zipfile.ZipFile(path) as archive:
            missing = [name for name in REQUIRED_MEMBERS if name not in archive.namelist()]
            if missing:
                raise _corrupt(path, f"the archive lacks {missing}")
            damaged = archive.testzip()
            if damaged is not None:
                raise _corrupt(path, f"the member {damaged!r} fails its checksum")
            config = json.loads(archive.read(_CONFIG))
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise _corrupt(path, f"the archive cannot be read ({error})") from error
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise _corrupt(path, f"its config.json is not JSON ({error})") from error
    if not isinstance(config, dict):
        raise _corrupt(path, "its config.json is not a JSON object")
    return path, config


def load_model(filepath, custom_objects=None, compile=True, safe_mode=True):
    """`keras.saving.load_model` with a `ValueError` naming a bad file.

    Loads any `.keras` file (a `Translator`, a `Transformer`, any Keras
    model). The file is only read, never changed: a file of an older layout
    of its model class (see the module docstring) is upgraded in a temporary
    copy.

    Args:
        filepath: str or path ending in `.keras`.
        custom_objects, compile, safe_mode: as in `keras.saving.load_model`.

    Returns:
        The model.

    Raises:
        ValueError: the file is missing, a folder, not a zip archive,
            lacks `config.json` or the weights, or Keras cannot rebuild the
            model or read its weights from it. The message names the file.

    Example:

    ```python
    translator.save("dates.keras")
    reloaded = keras_transformer.models.load_model("dates.keras")
    ```
    """
    path, config = _read_checked(filepath)
    try:
        with _in_current_layout(path, config) as current:
            return keras.saving.load_model(
                current,
                custom_objects=custom_objects,
                compile=compile,
                safe_mode=safe_mode,
            )
    # Keras and h5py report damaged members with these types.
    except (
        KeyError,
        IndexError,
        TypeError,
        OSError,
        EOFError,
        ValueError,
        zipfile.BadZipFile,
        json.JSONDecodeError,
    ) as error:
        raise _corrupt(path, f"{type(error).__name__}: {error}") from error


@contextlib.contextmanager
def _in_current_layout(path, config):
    """Yields `path`, or a temporary upgraded copy when the model class of
    the file (named by `config`, its parsed `config.json`) says the file is
    of an older layout (`upgrade_keras_file`)."""
    model_class = keras.saving.get_registered_object(config.get("registered_name"))
    upgrade = getattr(model_class, "upgrade_keras_file", None)
    upgraded = (
        upgrade(config["config"])
        if upgrade is not None and isinstance(config.get("config"), dict)
        else None
    )
    if upgraded is None:
        yield path
        return
    class_config, moves = upgraded
    with tempfile.TemporaryDirectory(prefix="keras_transformer-upgrade-") as folder:
        copy = os.path.join(folder, os.path.basename(path))
        weights = os.path.join(folder, _WEIGHTS)
        with zipfile.ZipFile(path) as source, zipfile.ZipFile(copy, "w") as target:
            for info in source.infolist():
                if info.filename == _CONFIG:
                    target.writestr(_CONFIG, json.dumps({**config, "config": class_config}))
                elif info.filename == _WEIGHTS:
                    with source.open(info) as member, open(weights, "wb") as file:
                        shutil.copyfileobj(member, file)
                    _move_groups(weights, moves)
                    target.write(weights, _WEIGHTS)
                else:
                    with source.open(info) as member, target.open(info.filename, "w") as out:
                        shutil.copyfileobj(member, out)
        yield copy


def _move_groups(weights_path, moves):
    """Moves HDF5 groups of a Keras weights file: `(old, new)` paths, in order."""
    import h5py  # A dependency of Keras, needed only here.

    with h5py.File(weights_path, "r+") as weights:
        for old, new in moves:
            if old in weights:
                parent = posixpath.dirname(new)
                if parent:
                    weights.require_group(parent)
                weights.move(old, new)


class AtomicSave:
    """The `save` of the library's models: atomic, refusing a bad path before
    writing (a mixin of `keras.Model` subclasses: `Transformer`,
    `Translator`)."""

    def save(self, filepath, overwrite=True, **kwargs):
        """Saves to a `.keras` file atomically (a `Translator` with its
        tokenizers).

        The file is written beside `filepath` and renamed over it once
        complete (the rule of `keras_transformer._files`), so a failure or a
        kill mid-write leaves any previous file as it was; a temporary left
        by a killed save is removed by the next save to `filepath`. A
        missing or unwritable folder, or a folder at `filepath`, is refused
        with a `ValueError` before anything is written. Load the file with
        `keras_transformer.models.load_model(filepath)`, which names a
        damaged file where `keras.saving.load_model` says "File not found".
        (`keras.saving.save_model(model, filepath)` is Keras' own function
        and writes in place, not atomically.)

        Args:
            filepath: str or path ending in `.keras`; its folder must exist.
            overwrite: bool. Whether to replace an existing file; False
                refuses one with a `ValueError` (Keras would prompt).
            **kwargs: other `keras.Model.save` arguments.
        """
        path = keras_path(filepath)
        what = f"the {type(self).__name__}"
        _files.check_destination(path, what, "model.keras")
        validation.check_bool("overwrite", overwrite)
        if os.path.exists(path) and not overwrite:
            raise ValueError(
                f"Cannot save to {filepath!r}: the file exists and "
                "overwrite=False."
            )
        with _files.replacing(path, what, suffix=".keras") as temporary:
            super().save(temporary, overwrite=True, **kwargs)
