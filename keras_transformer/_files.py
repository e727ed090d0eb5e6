"""The package's one way of writing a file or folder: whole or not at all.

The rule, for everything the library writes (a `.keras` model, a tokenizer,
LoRA weights, a checkpoint, a SavedModel export, a report page):

1. The new content goes to a hidden temporary beside the destination, in the
   same folder (so on the same file system, where a rename is atomic), named
   `.<name>.tmp-<pid>-<random><suffix>`. Creating it is the first thing a
   write does, so a folder that cannot be written is refused before any
   work is done.
2. The temporary is flushed and `os.fsync`ed (a folder: each of its files
   and sub-folders, then itself), so its bytes are on disk before it takes
   the destination's name.
3. `os.replace` moves it onto the destination, which therefore holds at
   every moment either the previous content or the new, never a part.
4. The destination's folder is fsynced, so that the rename itself survives a
   power loss (POSIX only: Windows cannot open a folder).

A write that fails removes its temporary and leaves the destination as it
was. A process killed mid-write cannot clean up: its temporary stays, and
the next write to the same destination removes every temporary of that
destination whose process has ended (POSIX; elsewhere they are left).

Checkpoints (`keras_transformer.checkpointing`) follow the same steps with
their own folder names, which their resume logic reads.
"""

import contextlib
import os
import re
import shutil
import tempfile

# A folder holding the previous content of a destination while the new one
# takes its place (see `staged_folder`); a leftover holding one is kept.
_PREVIOUS = "old"


def check_destination(path, what, example):
    """Returns the absolute folder `path` will be written into.

    Refuses, with a `ValueError` and before anything is written, a missing
    folder, a `path` that is a folder itself and a folder this process
    cannot write into.

    Args:
        path: str or path-like, the destination file.
        what: str, what is saved (for the message), e.g. "the tokenizer".
        example: str, a file name to suggest, e.g. "tokenizer.json".
    """
    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path)
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
    if not os.access(folder, os.W_OK | os.X_OK):
        raise _unwritable(what, path, folder, "permission denied")
    return folder


def _unwritable(what, path, folder, reason):
    return ValueError(
        f"Cannot save {what} to {path!r}: the folder {folder!r} cannot be "
        f"written ({reason}). Choose a writable folder or change its permissions."
    )


def _temporary_prefix(path):
    return f".{os.path.basename(path)}.tmp-{os.getpid()}-"


def _stale_pattern(path, suffix):
    return re.compile(
        rf"^\.{re.escape(os.path.basename(path))}\.tmp-(\d+)-[a-z0-9_]+"
        rf"{re.escape(suffix)}$"
    )


def _process_ended(pid):
    if os.name != "posix":
        return False  # No portable liveness test: keep the file.
    if pid == os.getpid():
        return False  # Another thread of this process may be writing it.
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # Alive, under another user.
    return False


def remove_stale_temporaries(path, suffix=""):
    """Removes the temporaries of `path` left by writers that were killed.

    Only names of the pattern `.<name>.tmp-<pid>-<random><suffix>` whose
    process has ended are removed; a folder still holding the previous
    content of `path` (a kill between the two renames of `staged_folder`)
    is kept.

    Returns:
        The removed paths, sorted.
    """
    folder = os.path.dirname(os.path.abspath(path))
    pattern = _stale_pattern(path, suffix)
    removed = []
    for name in os.listdir(folder):
        match = pattern.match(name)
        if not match or not _process_ended(int(match.group(1))):
            continue
        stale = os.path.join(folder, name)
        if os.path.isdir(stale) and not os.path.islink(stale):
            if os.path.lexists(os.path.join(stale, _PREVIOUS)):
                continue
            shutil.rmtree(stale, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(stale)
        removed.append(stale)
    return sorted(removed)


def fsync_folder(path):
    """Makes the names in folder `path` (a rename into it) durable."""
    if os.name != "posix":
        return
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_file(path):
    """Flushes the bytes of the file at `path` to disk."""
    with open(path, "rb") as file:
        os.fsync(file.fileno())


def fsync_tree(path):
    """Fsyncs every file and folder under folder `path`, `path` last."""
    for root, folders, files in os.walk(path, topdown=False):
        for name in files:
            fsync_file(os.path.join(root, name))
        for name in folders:
            fsync_folder(os.path.join(root, name))
    fsync_folder(path)


@contextlib.contextmanager
def durable_open(path, mode="wb", encoding=None):
    """`open(path, mode)` whose file is flushed and fsynced on closing.

    For files inside a folder that is itself written atomically (a
    checkpoint's); a file that replaces another uses `atomic_write`.
    """
    with open(path, mode, encoding=encoding) as file:
        yield file
        file.flush()
        os.fsync(file.fileno())


@contextlib.contextmanager
def replacing(path, what="the file", suffix=""):
    """Yields a temporary path beside `path` that replaces `path` on success.

    For writers that take a path (`keras.Model.save`): write the complete
    new content to the yielded path; when the block ends without an error
    it is fsynced and renamed over `path`, and the folder is fsynced. On an
    error it is deleted and `path` is left as it was. Stale temporaries of
    `path` are removed first.

    Args:
        path: str or path-like, the destination file; its folder must exist.
        what: str, what is saved, for the `ValueError` raised when the
            folder cannot be written.
        suffix: str, the temporary's ending (Keras wants `.keras`).

    Example:

    ```python
    with replacing("model.keras", suffix=".keras") as temporary:
        model.save(temporary)
    ```
    """
    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path)
    remove_stale_temporaries(path, suffix)
    try:
        handle, temporary = tempfile.mkstemp(
            dir=folder, prefix=_temporary_prefix(path), suffix=suffix
        )
    except OSError as error:
        raise _unwritable(what, path, folder, error.strerror or error) from error
    os.close(handle)
    try:
        yield temporary
        fsync_file(temporary)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    fsync_folder(folder)


@contextlib.contextmanager
def atomic_write(path, mode="w", what="the file", suffix=""):
    """Yields a file object whose content replaces `path` atomically.

    `mode` is "w" (text, UTF-8) or "wb". See `replacing` for the rule.

    Example:

    ```python
    with atomic_write("tokenizer.json") as file:
        json.dump(payload, file)
    ```
    """
    if mode not in ("w", "wb"):
        raise ValueError(
            f"Received an invalid value for argument mode, expected 'w' or "
            f"'wb'. Received: mode={mode!r}"
        )
    encoding = "utf-8" if mode == "w" else None
    with replacing(path, what=what, suffix=suffix) as temporary:
        with open(temporary, mode, encoding=encoding) as file:
            yield file


@contextlib.contextmanager
def staged_folder(path, what="the folder"):
    """Yields a folder path to create and fill; it then replaces `path`.

    The yielded path does not exist yet (writers such as
    `tf.saved_model.save` create it); it lies in a hidden workspace beside
    `path` (missing parents of `path` are created). When the block ends without an error,
    every file in it is fsynced, a previous `path` is moved aside into the
    workspace, the new folder is renamed into place, and the previous one
    is deleted; if the rename fails the previous one is moved back. A
    `ValueError` names the parent when the workspace cannot be made.
    """
    path = os.path.abspath(os.fspath(path))
    parent = os.path.dirname(path)
    try:
        os.makedirs(parent, exist_ok=True)
        remove_stale_temporaries(path)
        workspace = tempfile.mkdtemp(dir=parent, prefix=_temporary_prefix(path))
    except OSError as error:
        raise ValueError(
            f"Cannot write {what} to {path!r}: its parent folder {parent!r} "
            f"cannot be created or written ({error.strerror or error})."
        ) from error
    staging = os.path.join(workspace, "new")
    previous = os.path.join(workspace, _PREVIOUS)
    try:
        yield staging
        fsync_tree(staging)
        if os.path.lexists(path):
            os.replace(path, previous)
        try:
            os.replace(staging, path)
        except BaseException:
            if os.path.lexists(previous):
                os.replace(previous, path)
            raise
        fsync_folder(parent)
    except BaseException:
        # Only when the previous folder could not be moved back does it
        # remain in the workspace, which is then kept rather than deleted.
        if not os.path.lexists(previous):
            shutil.rmtree(workspace, ignore_errors=True)
        raise
    shutil.rmtree(workspace, ignore_errors=True)
