"""Loading `.keras` files with one clear error for every way a file is bad.

`keras.saving.load_model` answers a truncated or garbage file with "File not
found" (for a file that exists), and an archive with a missing or damaged
member with a `KeyError`, a `JSONDecodeError` or an h5py `OSError`.
`load_model` checks the archive first and turns whatever Keras raises while
reading it into a `ValueError` that names the file.
"""

import json
import os
import zipfile

import keras

# Every `.keras` archive Keras writes holds these members.
REQUIRED_MEMBERS = ("config.json", "model.weights.h5")


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
            config = json.loads(archive.read("config.json"))
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise _corrupt(path, f"the archive cannot be read ({error})") from error
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise _corrupt(path, f"its config.json is not JSON ({error})") from error
    if not isinstance(config, dict):
        raise _corrupt(path, "its config.json is not a JSON object")
    return path


def load_model(filepath, custom_objects=None, compile=True, safe_mode=True):
    """`keras.saving.load_model` with a `ValueError` naming a bad file.

    Loads any `.keras` file (a `Translator`, a `Transformer`, any Keras
    model). The file is only read, never changed.

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
    path = check_keras_file(filepath)
    try:
        return keras.saving.load_model(
            path, custom_objects=custom_objects, compile=compile, safe_mode=safe_mode
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
