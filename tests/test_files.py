"""The one atomic write (keras_transformer/_files.py) and its fsync rule."""

import os
import subprocess
import sys

import pytest

from keras_transformer import _files
from tests.conftest import run_python

# The child loads _files.py by path: it needs only the standard library, so
# the test does not pay for importing Keras in a second process.
KILLED_MID_WRITE = """
import importlib.util, os, sys
spec = importlib.util.spec_from_file_location("_files", sys.argv[1])
files = importlib.util.module_from_spec(spec)
spec.loader.exec_module(files)
with files.atomic_write(sys.argv[2]) as file:
    file.write("half of the new")
    file.flush()
    os._exit(3)
"""

KILLED_MID_FOLDER = """
import importlib.util, os, sys
spec = importlib.util.spec_from_file_location("_files", sys.argv[1])
files = importlib.util.module_from_spec(spec)
spec.loader.exec_module(files)
with files.staged_folder(sys.argv[2]) as staging:
    os.makedirs(staging)
    open(os.path.join(staging, "half"), "w").close()
    os._exit(3)
"""


def dead_pid():
    """The id of a process that has ended (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def read(path):
    with open(path, encoding="utf-8") as file:
        return file.read()


def test_atomic_write_replaces_the_file_and_leaves_nothing_else(tmp_path):
    path = tmp_path / "page.md"
    path.write_text("old")
    with _files.atomic_write(path) as file:
        file.write("new")
    assert read(path) == "new"
    assert os.listdir(tmp_path) == ["page.md"]


def test_atomic_write_in_binary_mode_writes_the_bytes(tmp_path):
    path = tmp_path / "blob.bin"
    with _files.atomic_write(path, "wb") as file:
        file.write(b"\x00\xff")
    assert path.read_bytes() == b"\x00\xff"


def test_an_error_inside_the_write_keeps_the_previous_file_and_no_temporary(tmp_path):
    path = tmp_path / "page.md"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="disk full"):
        with _files.atomic_write(path) as file:
            file.write("half")
            raise RuntimeError("disk full")
    assert read(path) == "old"
    assert os.listdir(tmp_path) == ["page.md"]


def test_the_file_is_fsynced_before_the_rename_and_the_folder_after(
    tmp_path, monkeypatch
):
    events = []
    fsync, replace = os.fsync, os.replace

    def recording_fsync(descriptor):
        kind = "folder" if os.path.isdir(f"/proc/self/fd/{descriptor}") else "file"
        events.append(f"fsync {kind}")
        fsync(descriptor)

    def recording_replace(source, destination):
        events.append("replace")
        replace(source, destination)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "replace", recording_replace)
    with _files.atomic_write(tmp_path / "page.md") as file:
        file.write("new")
    assert events == ["fsync file", "replace", "fsync folder"]


def test_the_temporary_keeps_the_suffix_a_writer_needs(tmp_path):
    with _files.replacing(tmp_path / "model.keras", suffix=".keras") as temporary:
        name = os.path.basename(temporary)
        assert name.startswith(".model.keras.tmp-")
        assert name.endswith(".keras")
        with open(temporary, "w") as file:
            file.write("archive")
    assert read(tmp_path / "model.keras") == "archive"


def test_a_writer_killed_mid_write_leaves_the_old_file_and_the_next_write_cleans_up(
    tmp_path,
):
    path = tmp_path / "page.md"
    path.write_text("old")
    result = run_python(KILLED_MID_WRITE, _files.__file__, str(path))
    assert result.returncode == 3, result.stderr
    assert read(path) == "old"
    leftovers = [name for name in os.listdir(tmp_path) if name != "page.md"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".page.md.tmp-")

    with _files.atomic_write(path) as file:
        file.write("new")
    assert os.listdir(tmp_path) == ["page.md"]
    assert read(path) == "new"


def test_temporaries_of_running_writers_and_of_other_files_are_kept(tmp_path):
    mine = tmp_path / f".page.md.tmp-{os.getpid()}-abc123"
    parent = tmp_path / f".page.md.tmp-{os.getppid()}-abc123"
    other_file = tmp_path / f".notes.md.tmp-{dead_pid()}-abc123"
    for path in (mine, parent, other_file):
        path.write_text("in progress")
    stale = tmp_path / f".page.md.tmp-{dead_pid()}-abc123"
    stale.write_text("killed")

    assert _files.remove_stale_temporaries(tmp_path / "page.md") == [str(stale)]
    assert sorted(os.listdir(tmp_path)) == sorted(
        [mine.name, parent.name, other_file.name]
    )


def test_check_destination_refuses_a_missing_folder(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        _files.check_destination(tmp_path / "missing" / "a.json", "the page", "a.json")


def test_check_destination_refuses_a_folder_at_the_path(tmp_path):
    with pytest.raises(ValueError, match="it is a folder.*'a.json'"):
        _files.check_destination(tmp_path, "the page", "a.json")


@pytest.mark.skipif(
    os.name != "posix" or os.geteuid() == 0,
    reason="root writes into read-only folders; the next test covers it",
)
def test_check_destination_refuses_a_read_only_folder(tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(ValueError, match="cannot be written"):
            _files.check_destination(folder / "a.json", "the page", "a.json")
    finally:
        folder.chmod(0o755)


def test_a_folder_that_refuses_the_temporary_fails_before_the_write_starts(
    tmp_path, monkeypatch
):
    def read_only(**kwargs):
        raise PermissionError(13, "Read-only file system")

    monkeypatch.setattr(_files.tempfile, "mkstemp", read_only)
    body_ran = False
    with pytest.raises(ValueError, match="cannot be written.*Read-only"):
        with _files.replacing(tmp_path / "model.keras", "the model", ".keras"):
            body_ran = True
    assert not body_ran
    assert os.listdir(tmp_path) == []


def test_atomic_write_refuses_an_unknown_mode(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        with _files.atomic_write(tmp_path / "a.txt", "a"):
            pass


def make_folder(path, content):
    os.makedirs(path)
    with open(os.path.join(path, "content"), "w") as file:
        file.write(content)


def test_staged_folder_replaces_a_previous_folder_whole(tmp_path):
    destination = tmp_path / "export"
    make_folder(destination, "old")
    with _files.staged_folder(destination) as staging:
        make_folder(staging, "new")
    assert read(destination / "content") == "new"
    assert os.listdir(tmp_path) == ["export"]


def test_staged_folder_creates_missing_parents(tmp_path):
    destination = tmp_path / "a" / "b" / "export"
    with _files.staged_folder(destination) as staging:
        make_folder(staging, "new")
    assert read(destination / "content") == "new"


def test_a_failing_staged_folder_keeps_the_previous_one_and_no_workspace(tmp_path):
    destination = tmp_path / "export"
    make_folder(destination, "old")
    with pytest.raises(RuntimeError, match="disk full"):
        with _files.staged_folder(destination) as staging:
            make_folder(staging, "half")
            raise RuntimeError("disk full")
    assert read(destination / "content") == "old"
    assert os.listdir(tmp_path) == ["export"]


def test_staged_folder_under_a_file_is_refused_naming_the_parent(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="parent folder .*file"):
        with _files.staged_folder(tmp_path / "file" / "export"):
            pass


def test_a_killed_staged_folder_is_removed_by_the_next_write_unless_it_holds_the_old(
    tmp_path,
):
    destination = tmp_path / "export"
    make_folder(destination, "old")
    result = run_python(KILLED_MID_FOLDER, _files.__file__, str(destination))
    assert result.returncode == 3, result.stderr
    assert read(destination / "content") == "old"
    assert len(os.listdir(tmp_path)) == 2
    # A kill between the two renames leaves the previous folder inside its
    # workspace: that one is the only copy, so it is kept.
    holding_old = tmp_path / f".export.tmp-{dead_pid()}-abc123"
    make_folder(holding_old / "old", "only copy")

    with _files.staged_folder(destination) as staging:
        make_folder(staging, "new")
    assert sorted(os.listdir(tmp_path)) == sorted(["export", holding_old.name])
    assert read(holding_old / "old" / "content") == "only copy"
