"""Argument and shape checks shared by every constructor of the package.

Messages follow Keras core: they name the argument, say what was expected and
show what was received, so a user can fix the call without reading our code.
"""

import numbers
import os


def _invalid(name, expected, value, hint=""):
    message = (
        f"Received an invalid value for argument {name}, expected {expected}. "
        f"Received: {name}={value!r}"
    )
    if hint:
        message += f". {hint}"
    return ValueError(message)


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_positive_int(name, value, allow_none=False):
    """Raises `ValueError` unless `value` is an integer >= 1."""
    if value is None and allow_none:
        return value
    if not _is_int(value) or value < 1:
        raise _invalid(name, "a positive integer", value)
    return int(value)


def check_non_negative_int(name, value):
    """Raises `ValueError` unless `value` is an integer >= 0."""
    if not _is_int(value) or value < 0:
        raise _invalid(name, "a non-negative integer", value)
    return int(value)


def check_positive_float(name, value, allow_none=False):
    """Raises `ValueError` unless `value` is a finite number > 0."""
    if value is None and allow_none:
        return value
    if (
        not isinstance(value, numbers.Real)
        or isinstance(value, bool)
        or not value > 0
        or value == float("inf")
    ):
        raise _invalid(name, "a positive finite number", value)
    return float(value)


def check_rate(name, value, allow_none=False):
    """Raises `ValueError` unless `value` is a probability in [0, 1)."""
    if value is None and allow_none:
        return value
    if (
        not isinstance(value, numbers.Real)
        or isinstance(value, bool)
        or not 0.0 <= value < 1.0
    ):
        raise _invalid(name, "a float in the range [0, 1)", value)
    return float(value)


def check_fraction(name, value):
    """Raises `ValueError` unless `value` is a number in the open range (0, 1)."""
    if (
        not isinstance(value, numbers.Real)
        or isinstance(value, bool)
        or not 0.0 < value < 1.0
    ):
        raise _invalid(name, "a float in the range (0, 1)", value)
    return float(value)


def check_bool(name, value):
    """Raises `ValueError` unless `value` is a bool (NumPy bools included).

    Strict on purpose: `bool("False")` is True, so a string or a number that
    merely converts to a bool would silently switch a feature on.
    """
    numpy_bool = type(value).__module__ == "numpy" and type(value).__name__ in (
        "bool",
        "bool_",
    )
    if isinstance(value, bool) or numpy_bool:
        return bool(value)
    raise _invalid(name, "a bool (True or False)", value)


def check_string(name, value):
    """Raises `ValueError` unless `value` is a non-empty `str`."""
    if not isinstance(value, str) or not value:
        raise _invalid(name, "a non-empty string", value)
    return value


def check_choice(name, value, choices):
    """Raises `ValueError` unless `value` is one of `choices`."""
    if value not in choices:
        options = ", ".join(repr(choice) for choice in choices)
        raise _invalid(name, f"one of {options}", value)
    return value


def check_divisible(name, value, divisor_name, divisor):
    """Raises `ValueError` unless `value` is a multiple of `divisor`."""
    if value % divisor != 0:
        raise ValueError(
            f"Received an invalid value for argument {name}, expected a "
            f"multiple of {divisor_name}={divisor}. Received: {name}={value}"
        )
    return value


def check_required_keys(name, record, required):
    """Raises `ValueError` naming every key of `required` missing from `record`."""
    if not isinstance(record, dict):
        raise _invalid(name, "a dict", record)
    missing = [key for key in required if key not in record]
    if missing:
        raise ValueError(
            f"Received an invalid value for argument {name}, expected a dict "
            f"with the required fields {missing}, which are missing. "
            f"Received: {name}={record!r}"
        )
    return record


def check_rank(layer_name, argument, shape, expected_ranks):
    """Raises `ValueError` at build time when a tensor has the wrong rank."""
    if isinstance(expected_ranks, int):
        expected_ranks = (expected_ranks,)
    if shape is None or len(shape) not in expected_ranks:
        ranks = " or ".join(str(rank) for rank in expected_ranks)
        raise ValueError(
            f"Layer {layer_name} expected {argument} of rank {ranks}, "
            f"but received a tensor of shape {tuple(shape or ())}."
        )


def check_last_dim(layer_name, argument, shape, expected):
    """Raises `ValueError` when the feature axis is unknown or mismatched."""
    last = shape[-1]
    if last is None:
        raise ValueError(
            f"Layer {layer_name} needs the last dimension of {argument} to be "
            f"known at build time, but received shape {tuple(shape)}."
        )
    if expected is not None and last != expected:
        raise ValueError(
            f"Layer {layer_name} expected the last dimension of {argument} to "
            f"be {expected}, but received shape {tuple(shape)}."
        )
    return int(last)


def check_file_destination(path, what, example):
    """Returns the folder `path` will be written into, refusing a missing
    folder or a `path` that is a folder itself, before anything is written.

    Args:
        path: str, the destination file.
        what: str, what is saved (for the message), e.g. "the tokenizer".
        example: str, a file name to suggest, e.g. "tokenizer.json".
    """
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(
            f"Cannot save {what} to {path!r}: the folder {folder!r} does not "
            "exist (or is not a folder). Create it first."
        )
    if os.path.isdir(path):
        raise ValueError(
            f"Cannot save {what} to {path!r}: it is a folder. Give a file name, "
            f"such as {example!r}."
        )
    return folder
