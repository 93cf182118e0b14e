"""The label store against what users do to files: one test a numbered case of issue 15.

1 a reader racing a writer, 2 a full disk, 3 links, 4 bad arguments, 5 nulls, 6 a failed lock,
7 read-only files and folders, 8 os.chdir, 9 exporting over the labels, 10 lines that are
complete but wrong, the export's fsync, and a file replaced under an open store.
Every check reads back what is on disk.
"""
import contextlib
import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
import warnings

import pytest

from rlhf_lite import label_file
from rlhf_lite.label_store import (LabelStore, LabelStoreError, LabelStoreLockedError,
                                   LabelStoreWarning, LabelStoreWriteError)
from rlhf_lite.widget import LabelingWidget


def lines_of(store_calls, path):
    """The bytes a store writes for ``store_calls`` (a function of a store), made in a copy."""
    copy = path.with_name("copy.jsonl")
    shutil.copy(path, copy)
    before = copy.read_bytes()
    with LabelStore(copy) as other:
        store_calls(other)
    return copy.read_bytes()[len(before):]


def labeled(path, n, start=0):
    with LabelStore(path) as store:
        for i in range(start, start + n):
            store.label(f"p{i}", f"left {i}", f"right {i}", "AB"[i % 2])


def ids(path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # and no warning: nothing to set aside
        return [e["id"] for e in LabelStore(path).events]


# --- 1. a reader that finds a cut last line ---------------------------------------------------

def test_1_a_reader_mends_only_what_is_still_cut_once_it_holds_the_lock(tmp_path, monkeypatch):
    path = tmp_path / "labels.jsonl"
    labeled(path, 2)
    rest = lines_of(lambda s: [s.label(f"q{i}", "a" * 5000, "b", "A") for i in range(3)], path)
    half = len(rest) // 6                                  # inside label 3
    with open(path, "ab") as f:
        f.write(rest[:half])                               # what the reader sees: a cut line
    real_try_lock = label_file._try_lock

    def writer_finishes_first(fd):
        """The race: between the reader's read and its lock, the writer ends that line, adds
        two more labels and closes (what a delay before the lock used to lose)."""
        with open(path, "ab") as f:
            f.write(rest[half:])
        return real_try_lock(fd)

    monkeypatch.setattr(label_file, "_try_lock", writer_finishes_first)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reader = LabelStore(path)
    monkeypatch.undo()
    assert [e["id"] for e in reader.events] == [1, 2, 3, 4, 5] and not reader.set_aside
    assert path.read_bytes().endswith(rest) and not (tmp_path / "labels.jsonl.setaside").exists()
    assert ids(path) == [1, 2, 3, 4, 5]


def test_1_a_line_still_cut_under_the_lock_is_set_aside_with_its_real_cause(tmp_path):
    path = tmp_path / "labels.jsonl"
    labeled(path, 2)
    with open(path, "ab") as f:
        f.write(b'{"id": 3, "event": "label", "prompt": "caf\xc3')   # cut inside a character
    with pytest.warns(LabelStoreWarning, match="labels.jsonl:3: the last line is cut off mid-write"
                      r" \(43 bytes\): a writer stopped before finishing it \(killed, crashed or "
                      "out of disk space\\); it is set aside in"):
        assert [e["id"] for e in LabelStore(path).events] == [1, 2]
    assert ids(path) == [1, 2]


# --- 2. a full disk ---------------------------------------------------------------------------

@pytest.fixture
def full_disk(monkeypatch):
    """Arm ``full_disk(store, truncate_fails=False)``: the store's next write stops half-way with
    ENOSPC (and, if asked, cutting the half line back out fails too). Returns a disarm function."""
    real_write, real_truncate = os.write, os.ftruncate

    def arm(store, truncate_fails=False):
        fd = store._file.fd

        def write(f, data):
            if f == fd:
                real_write(f, bytes(data[:len(data) // 2]))
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_write(f, data)

        def ftruncate(f, size):
            if f == fd and truncate_fails:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_truncate(f, size)
        monkeypatch.setattr(os, "write", write)
        monkeypatch.setattr(os, "ftruncate", ftruncate)
        return monkeypatch.undo
    return arm


def test_2_a_failed_write_leaves_no_half_line_for_the_next_label(tmp_path, full_disk):
    path = tmp_path / "labels.jsonl"
    store = LabelStore(path)
    store.label("p0", "a", "b", "A")
    before = path.read_bytes()
    disarm = full_disk(store)
    with pytest.raises(LabelStoreWriteError, match="not saved .No space left on device.; the file "
                       "is as it was before. Free some disk space"):
        store.label("p1", "a" * 1000, "b", "A")
    disarm()
    assert path.read_bytes() == before
    assert store.label("p2", "a", "b", "B")["id"] == 2      # acknowledged, and on a line of its own
    assert ids(path) == [1, 2]


def test_2_even_when_cutting_the_half_line_out_fails_the_next_write_sets_it_aside(tmp_path,
                                                                                   full_disk):
    path = tmp_path / "labels.jsonl"
    store = LabelStore(path)
    store.label("p0", "a", "b", "A")
    disarm = full_disk(store, truncate_fails=True)
    with pytest.raises(LabelStoreWriteError, match="set aside at the next write"):
        store.label("p1", "a" * 1000, "b", "A")
    disarm()
    with pytest.warns(LabelStoreWarning, match="cut off mid-write"):
        assert store.label("p2", "a", "b", "B")["id"] == 2
    assert ids(path) == [1, 2] and b'"p1"' in (tmp_path / "labels.jsonl.setaside").read_bytes()


def test_2_the_widget_shows_a_full_disk_and_saves_once_there_is_room(tmp_path, full_disk, world):
    path = tmp_path / "labels.jsonl"
    pairs = [(p, "answer one.", "answer two.") for p in world.prompts[:3]]
    widget = LabelingWidget(LabelStore(path), pairs)
    widget.buttons["A better"].click()
    disarm = full_disk(widget.store)
    shown = widget.current
    widget.buttons["B better"].click()
    disarm()
    assert "Not saved" in widget._status.value and "No space left" in widget._status.value
    assert widget.current == shown
    widget.buttons["B better"].click()
    assert ids(path) == [1, 2] and LabelStore(path).comparisons()[1].prompt == shown[0]


@contextlib.contextmanager
def small_disk(folder, size="64k"):
    """A tmpfs of ``size`` at ``folder`` (needs root and mount rights; skips the test without)."""
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.decode().strip()}); the "
                    "injected ENOSPC tests cover the same code")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_2_on_a_real_full_disk_no_acknowledged_label_is_lost(tmp_path, world):
    disk = tmp_path / "disk"
    with small_disk(disk):
        path = disk / "labels.jsonl"
        store, acked = LabelStore(path), []
        with pytest.raises(LabelStoreWriteError, match="No space left on device"):
            for i in range(10_000):
                acked.append(store.label(f"prompt {i}", "a long answer " * 20, "b", "A")["id"])
        assert len(acked) > 50 and ids(path) == acked
        pairs = [(p, "answer one.", "answer two.") for p in world.prompts[:3]]
        widget = LabelingWidget(store, pairs)
        widget.buttons["A better"].click()
        assert "Not saved" in widget._status.value and ids(path) == acked
        subprocess.run(["mount", "-o", "remount,size=1m", str(disk)], check=True)
        widget.buttons["A better"].click()
        assert store.label("after", "x", "y", "B")["id"] == acked[-1] + 2
        assert ids(path) == acked + [acked[-1] + 1, acked[-1] + 2]
        store.close()


# --- 3. links ---------------------------------------------------------------------------------

ANOTHER_PROCESS = r"""
import sys
from rlhf_lite.label_store import LabelStore
for line in sys.stdin:   # "label NAME": label through NAME, keep the lock; "cut": half a line
    command, _, name = line.strip().partition(" ")
    if command == "label":
        store = LabelStore(name)
        store.label("from the child", "a", "b", "A", "child")
    elif command == "cut":
        store._file.append(b'{"id": 99, "ev')
    else:
        store.close()
    print("done", flush=True)
"""


def test_3_every_name_and_link_of_the_file_reaches_the_same_lock(tmp_path):
    path = tmp_path / "labels.jsonl"
    path.write_bytes(b"")
    (tmp_path / "symlink.jsonl").symlink_to(path)
    os.link(path, tmp_path / "hardlink.jsonl")
    names = [path, tmp_path / "symlink.jsonl", tmp_path / "hardlink.jsonl"]
    child = subprocess.Popen([sys.executable, "-c", ANOTHER_PROCESS], stdout=subprocess.PIPE,
                             stdin=subprocess.PIPE, text=True)

    def tell(command):
        child.stdin.write(command + "\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "done"
    try:
        for held in names:
            tell(f"label {held}")
            for name in names:   # a second writer through any name is refused
                with pytest.raises(LabelStoreLockedError, match=f"process {child.pid}"):
                    LabelStore(name).label("second writer", "a", "b", "A")
            tell("close")
        assert ids(path) == [1, 2, 3]
        tell(f"label {names[1]}")
        tell("cut")              # the child's line in flight, seen through another link
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert [e["id"] for e in LabelStore(names[2]).events] == [1, 2, 3, 4]  # left alone
    finally:
        child.kill()             # SIGKILL: the line stays cut, and nobody holds the lock
        child.wait()
    with pytest.warns(LabelStoreWarning, match="cut off mid-write"):
        assert [e["id"] for e in LabelStore(path).events] == [1, 2, 3, 4]   # now set aside
    stores = [LabelStore(name) for name in names]   # in one process: the newer takes over
    stores[0].label("one", "a", "b", "A")
    stores[2].label("two", "a", "b", "A")
    with pytest.raises(LabelStoreLockedError, match="newer LabelStore"):
        stores[0].label("three", "a", "b", "A")
    assert ids(path) == [1, 2, 3, 4, 5, 6]


# --- 4. the writer accepts only what the reader reads ------------------------------------------

@pytest.mark.parametrize("call, message", [
    (lambda s: s.label(123, "a", "b", "A"), "label: prompt must be str, got 123"),
    (lambda s: s.label("p", "a", "b", "A", labeler=7), "labeler must be str, got 7"),
    (lambda s: s.label("p", "a", "b", "A", swapped="yes"), "swapped must be bool, got 'yes'"),
    (lambda s: s.label("p", "a", "b", "A", criteria=5), "criteria must be str, got 5"),
    (lambda s: s.label(float("nan"), "a", "b", "A"), "prompt must be str, got nan"),
    (lambda s: s.label("p", "a", None, "A"), "right must be str, got null"),
    (lambda s: s.label("p", "a", "b", "C"), "choice 'C' is none of A, B, tie, both_bad"),
    (lambda s: s.label("p\ud800", "a", "b", "A"), "prompt is not valid Unicode text"),
    (lambda s: s.label("p", "a", "b", "A", simulated="no"), "simulated must be bool"),
    (lambda s: s.skip(123, "a", "b"), "skip: prompt must be str, got 123"),
    (lambda s: s.label_many([dict(prompt="p", left="a", right="b", choice="A"),
                             dict(prompt="p", left=1, right="b", choice="A")]),
     "label_many row 1: left must be str, got 1"),
    (lambda s: s.label_many([dict(prompt="p", left="a", choice="A")]), "row 0 lacks right"),
])
def test_4_the_writer_refuses_what_the_reader_would(tmp_path, call, message):
    path = tmp_path / "labels.jsonl"
    labeled(path, 1)
    before = path.read_bytes()
    store = LabelStore(path)
    with pytest.raises(ValueError, match=f"{message}.*nothing was written"):
        call(store)
    assert path.read_bytes() == before and ids(path) == [1]
    assert store.label("p", "a", "b", "A")["id"] == 2      # the store goes on


# --- 5. nulls ----------------------------------------------------------------------------------

GOOD = {"id": 1, "event": "label", "time": "t", "labeler": "you", "prompt": "p", "left": "a",
        "right": "b", "choice": "A"}


@pytest.mark.parametrize("field", ["prompt", "left", "right", "labeler", "id", "choice", "time"])
def test_5_a_null_where_text_belongs_is_an_error_naming_file_and_line(tmp_path, field):
    path = tmp_path / "labels.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps({**GOOD, "id": 2, field: None}) + "\n")
    with pytest.raises(LabelStoreError, match=f"labels.jsonl:2: {field} must be \\w+, got null"):
        LabelStore(path)


def test_5_nulls_where_the_format_allows_them_load(tmp_path):
    path = tmp_path / "labels.jsonl"
    path.write_text(json.dumps(dict(GOOD, swapped=None, criteria=None, simulated=None)) + "\n")
    assert LabelStore(path).comparisons()[0].prompt == "p"


# --- 6. a failed lock leaves nothing half-open ---------------------------------------------------

@contextlib.contextmanager
def without_root():
    """Run the block as a user whom file permissions apply to (root ignores them)."""
    if os.geteuid() != 0:
        yield
        return
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)


@pytest.fixture
def open_folder():
    """A folder any user may enter (pytest's tmp_path is root's own)."""
    folder = tempfile.mkdtemp(prefix="labels-")
    os.chmod(folder, 0o777)
    yield folder
    os.chmod(folder, 0o777)
    shutil.rmtree(folder)


def test_6_a_failed_lock_leaves_nothing_half_open(open_folder):
    path = os.path.join(open_folder, "labels.jsonl")
    labeled(path, 1)
    os.chmod(path, 0o444)
    with without_root():
        store = LabelStore(path)
        for _ in range(2):   # the same clear error each time, never a half-open store
            with pytest.raises(LabelStoreWriteError, match="cannot write the label file "
                               r"\(Permission denied\)\. Make it and its folder writable"):
                store.label("p1", "a", "b", "A")
            assert store._file.fd is None
    os.chmod(path, 0o666)   # the permission fixed
    with without_root():
        assert store.label("p1", "a", "b", "A")["id"] == 2
        store.close()
    assert ids(path) == [1, 2]


# --- 7. reading a cut file needs no write access -------------------------------------------------

@pytest.mark.parametrize("read_only", ["folder", "file"])
def test_7_a_cut_last_line_in_a_read_only_place_is_left_out_not_mended(open_folder, read_only):
    path = os.path.join(open_folder, "labels.jsonl")
    labeled(path, 2)
    with open(path, "ab") as f:
        f.write(b'{"id": 3, "event": "lab')
    os.chmod(path, 0o444 if read_only == "file" else 0o666)
    os.chmod(open_folder, 0o555 if read_only == "folder" else 0o777)
    before = open(path, "rb").read()
    with without_root():
        for _ in range(2):   # the same each time: nothing written, nothing piled up
            with pytest.warns(LabelStoreWarning, match="cut off mid-write.*only left out"):
                store = LabelStore(path)
            assert [e["id"] for e in store.events] == [1, 2] and len(store.comparisons()) == 2
    assert open(path, "rb").read() == before
    assert not os.path.exists(path + ".setaside")


# --- 8. os.chdir --------------------------------------------------------------------------------

def test_8_a_relative_path_keeps_naming_the_same_file_after_chdir(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    store = LabelStore("labels.jsonl")
    store.label("p0", "a", "b", "A")
    monkeypatch.chdir(tmp_path / "b")
    store.reload()
    store.label("p1", "a", "b", "B")
    assert [e["id"] for e in store.events] == [1, 2] == ids(tmp_path / "a" / "labels.jsonl")
    assert not (tmp_path / "b" / "labels.jsonl").exists()


# --- 9. exporting over the labels ----------------------------------------------------------------

def test_9_export_refuses_to_write_over_the_label_file(tmp_path):
    path = tmp_path / "labels.jsonl"
    labeled(path, 3)
    (tmp_path / "link.jsonl").symlink_to(path)
    before = path.read_bytes()
    store = LabelStore(path)
    for target in (store.path, path, tmp_path / "link.jsonl"):
        with pytest.raises(ValueError, match="this store's own label file"):
            store.export_trl(target)
    from rlhf_lite.preferences import write_trl_jsonl
    with pytest.raises(ValueError, match="holds label events"):
        write_trl_jsonl(store.comparisons(), path)   # the same file reached another way
    assert path.read_bytes() == before
    assert store.export_trl(tmp_path / "preferences.jsonl") == 3


# --- 10. complete but wrong, the export's fsync, a file replaced under the store ------------------

@pytest.mark.parametrize("last, message", [
    (b'{"id": 3, "event": "label" "prompt": "p"}', "not valid JSON"),            # a typo
    (b'{"id": 3, "event": "label", "prompt": "caf\xe9"}', "not UTF-8 text"),     # Latin-1
    (b'{"id": 3, "event": "label", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
     "nested too deeply"),
    (b'{"id": 3, "x": ' + b"[" * 100_000, "nested too deeply"),
    (b'{"id": 3, "event": "vote", "time": "t"}', "unknown event 'vote'"),
])
def test_10_a_complete_but_wrong_last_line_is_an_error_not_a_crash(tmp_path, last, message):
    path = tmp_path / "labels.jsonl"
    labeled(path, 2)
    with open(path, "ab") as f:
        f.write(last)
    before = path.read_bytes()
    with pytest.raises(LabelStoreError, match=f"labels.jsonl:3: {message}"):
        LabelStore(path)
    assert path.read_bytes() == before and not (tmp_path / "labels.jsonl.setaside").exists()


def test_10_lone_carriage_return_line_ends_are_named(tmp_path):
    path = tmp_path / "labels.jsonl"
    path.write_bytes(b"\r".join(json.dumps(dict(GOOD, id=i)).encode() for i in (1, 2, 3)))
    with pytest.raises(LabelStoreError, match=r"labels.jsonl:1: not valid JSON .* lone carriage "
                       r"return, \\r: convert them to \\n"):
        LabelStore(path)


def test_10_the_export_is_fsynced_before_it_is_renamed_into_place(tmp_path, monkeypatch):
    from rlhf_lite import preferences
    calls, real_fsync, real_replace = [], os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(("fsync", os.fstat(fd).st_size)),
                                                   real_fsync(fd)))
    monkeypatch.setattr(os, "replace", lambda a, b: (calls.append(("replace", 0)),
                                                     real_replace(a, b)))
    labeled(tmp_path / "labels.jsonl", 2)
    calls.clear()
    preferences.write_trl_jsonl(LabelStore(tmp_path / "labels.jsonl").comparisons(),
                                tmp_path / "out" / "preferences.jsonl")
    size = (tmp_path / "out" / "preferences.jsonl").stat().st_size
    assert calls[:2] == [("fsync", size), ("replace", 0)] and calls[2][0] == "fsync"  # the folder


def editor_saves(path, edit=lambda text: text):
    """What many editors do: write the new text to a new file, then rename it over the old."""
    text = path.read_text(encoding="utf-8")
    path.with_suffix(".swp").write_text(edit(text), encoding="utf-8")
    os.replace(path.with_suffix(".swp"), path)


def test_10_a_file_replaced_under_an_open_store_gets_the_labels_that_follow(tmp_path):
    path = tmp_path / "labels.jsonl"
    store = LabelStore(path)
    store.label("p0", "a", "b", "A")
    store.label("p1", "a", "b", "A")
    editor_saves(path, lambda text: text.replace('"prompt": "p1"', '"prompt": "p1 mended"'))
    with pytest.warns(LabelStoreWarning, match="replaced on disk"):
        assert store.label("p2", "a", "b", "B")["id"] == 3
    reread = LabelStore(path)
    assert [c.prompt for c in reread.comparisons()] == ["p0", "p1 mended", "p2"]
    with open(path, "a", encoding="utf-8") as f:   # an edit in place, appended by hand
        f.write(json.dumps(dict(GOOD, id=4, prompt="by hand")) + "\n")
    with pytest.warns(LabelStoreWarning, match="changed by another program"):
        assert store.label("p3", "a", "b", "B")["id"] == 5
    assert ids(path) == [1, 2, 3, 4, 5]
    store.close()


def test_10_a_replacement_during_a_write_is_caught_and_the_label_written_again(tmp_path,
                                                                                monkeypatch):
    path = tmp_path / "labels.jsonl"
    store = LabelStore(path)
    store.label("p0", "a", "b", "A")
    real_fsync, fd = os.fsync, store._file.fd

    def editor_saves_meanwhile(f):
        real_fsync(f)
        if f == fd:   # our line is written: now the editor renames its own file over it
            monkeypatch.setattr(os, "fsync", real_fsync)
            editor_saves(path, lambda text: json.dumps(dict(GOOD, prompt="the editor's")) + "\n")
    monkeypatch.setattr(os, "fsync", editor_saves_meanwhile)
    with pytest.warns(LabelStoreWarning, match="replaced on disk"):
        event = store.label("p1", "a", "b", "B")
    assert [(e["id"], e["prompt"]) for e in LabelStore(path).events] == \
        [(1, "the editor's"), (event["id"], "p1")]
    store.close()
