"""The labeling widget, driven headless: ``Button.click()`` runs the same handlers a browser click
does. Every check reads back what the store wrote to disk."""
import html
import logging
import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import ipywidgets as widgets
import pytest

from rlhf_lite import SimulatedLabeler, get_criteria
from rlhf_lite.label_store import LabelStore, LabelStoreLockedError, fill_unlabeled, shown_sides
from rlhf_lite.preferences import pair_key
from rlhf_lite.widget import BOX_CLASS, FALLBACK_TEXT, WATCHED_CLASS, LabelingWidget, keys_line

BUTTONS = ["A better", "B better", "Tie", "Both bad", "Skip", "Undo"]


@pytest.fixture
def pairs(world):
    """Pairs of the world's prompts, with both side orders among the first four."""
    for variant in range(100):
        out = [(prompt, f"answer one {i}.{variant}", f"answer two {i}.")
               for i, prompt in enumerate(world.prompts[:12])]
        flips = [shown_sides(p)[2] for p in out[:4]]
        if any(flips) and not all(flips):
            return out


def on_disk(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_buttons_write_the_right_records_with_sides_mapped_back(tmp_path, pairs):
    path = tmp_path / "labels.jsonl"
    widget = LabelingWidget(LabelStore(path), pairs, criteria="concise", seed=0)
    assert list(widget.buttons) == BUTTONS
    assert [b.description for b in widget.box.children[4].children] == BUTTONS
    for name, pair in zip(["A better", "B better", "Tie", "Both bad"], pairs):
        prompt, left, right, swapped = widget.current
        assert prompt == pair[0] and {left, right} == {pair[1], pair[2]}
        assert (left == pair[2]) == swapped               # swapped: completion_1 shown on the right
        widget.buttons[name].click()
        event = on_disk(path)[-1]                         # on disk before the widget moved on
        assert (event["event"], event["labeler"], event["criteria"]) == ("label", "you", "concise")
        assert (event["prompt"], event["left"], event["right"], event["swapped"]) == \
            (prompt, left, right, swapped)
        assert event["choice"] == {"A better": "A", "B better": "B", "Tie": "tie",
                                   "Both bad": "both_bad"}[name]
        assert widget.current[0] == pairs[pairs.index(pair) + 1][0]
    got = LabelStore(path).comparisons()
    # "A better" prefers the completion shown left, "B better" the one shown right, whatever
    # their order
    chosen_a = pairs[0][2] if shown_sides(pairs[0])[2] else pairs[0][1]
    chosen_b = pairs[1][1] if shown_sides(pairs[1])[2] else pairs[1][2]
    assert (got[0].chosen, got[1].chosen) == (chosen_a, chosen_b)
    assert {got[0].rejected, got[0].chosen} == {pairs[0][1], pairs[0][2]}
    assert (got[2].tie, got[3].both_bad) == (True, True)
    assert widget.box.children[1].children[0].value == 4   # the progress bar


def test_skip_and_undo(tmp_path, pairs):
    path = tmp_path / "labels.jsonl"
    store = LabelStore(path)
    widget = LabelingWidget(store, pairs)
    widget.buttons["A better"].click()
    widget.buttons["Skip"].click()
    assert on_disk(path)[-1]["event"] == "skip" and widget.current[0] == pairs[2][0]
    assert len(store.comparisons()) == 1                  # a skip is no comparison
    widget.buttons["Undo"].click()                         # undoes the skip: pair 2 is back
    assert on_disk(path)[-1] == {**on_disk(path)[-1], "event": "undo", "undoes": 2,
                                 "labeler": "you"}
    assert widget.current[0] == pairs[1][0]
    widget.buttons["Undo"].click()                         # and then the label: pair 1 is back
    assert widget.current[0] == pairs[0][0] and store.comparisons() == []
    assert "undid your A" in widget._status.value
    widget.buttons["Undo"].click()                         # nothing left: no event written
    assert len(on_disk(path)) == 4 and "nothing of yours to undo" in widget._status.value
    widget.buttons["B better"].click()
    assert [e["event"] for e in on_disk(path)] == ["label", "skip", "undo", "undo", "label"]
    assert [c.prompt for c in LabelStore(path).comparisons()] == [pairs[0][0]]


def test_keys_do_what_the_buttons_do(tmp_path, pairs):
    path = tmp_path / "labels.jsonl"
    widget = LabelingWidget(LabelStore(path), pairs)
    for key in ["ArrowLeft", "b", "T", "x", "s"]:
        widget._on_key({"type": "keydown", "key": key})
    widget._on_key({"type": "keydown", "key": "a", "repeat": True})      # a held key: ignored
    widget._on_key({"type": "keydown", "key": "a", "ctrlKey": True})     # a shortcut: ignored
    widget._on_key({"type": "keydown", "key": "q"})                      # no binding
    assert [e.get("choice", e["event"]) for e in on_disk(path)] == \
        ["A", "B", "tie", "both_bad", "skip"]
    widget._on_key({"type": "keydown", "key": "Backspace"})
    assert on_disk(path)[-1]["event"] == "undo"


def test_guidelines_shortcuts_and_progress_are_on_screen(tmp_path, pairs):
    widget = LabelingWidget(LabelStore(tmp_path / "labels.jsonl"), pairs, criteria="friendly")
    widget.buttons["A better"].click()
    text = " ".join(html.unescape(w.value) for w in widget.box.children if hasattr(w, "value"))
    text += " ".join(html.unescape(w.value) for w in widget.box.children[1].children[1:])
    assert get_criteria("friendly").guidelines in text
    for key in ["\u2190", "\u2192", "Backspace"] + [f"</kbd> {name}" for name in BUTTONS]:
        assert key in text
    assert "1 / 12" in text and "1 labeled by you" in text
    assert "application/vnd.jupyter.widget-view+json" in widget._repr_mimebundle_()


def test_keys_line_shows_each_key_as_a_key_cap_at_13_px():
    line = keys_line(live=True)
    caps = re.findall(r"<kbd style='([^']*)'>(.*?)</kbd>", line)
    assert [html.unescape(key) for _, key in caps] == \
        ["\u2190", "a", "\u2192", "b", "t", "x", "s", "u", "Backspace"]
    assert all("border:" in style and "border-radius:" in style for style, _ in caps)
    # "or" stands between the caps of one action, in plain text: it cannot be read as a key
    between = re.sub(r"<[^>]+>", "", re.sub(r"<kbd.*?</kbd>", "[key]", line))
    assert between.count("[key] or [key]") == 3 and not any("or" in key for _, key in caps)
    sizes = [int(px) for px in re.findall(r"font(?:-size)?:(\d+)px", line)]
    assert sizes and min(sizes) >= 13 and "<small" not in line
    assert "ipyevents" in keys_line(live=False) and "rlhf-keys-off" not in keys_line(live=False)


def test_keys_off_hint_follows_the_class_ipyevents_sets_while_it_listens(tmp_path, pairs):
    ipyevents = pytest.importorskip("ipyevents")
    scripts = Path(ipyevents.__file__).parent.glob("labextension/static/*.js")
    assert any(WATCHED_CLASS in path.read_text(errors="replace") for path in scripts)
    widget = LabelingWidget(LabelStore(tmp_path / "labels.jsonl"), pairs)
    assert BOX_CLASS in widget.box._dom_classes and widget._events.source is widget.box
    line = widget.box.children[5].value
    assert line == keys_line(live=True)
    # the CSS hides "Keys off" and shows "Keys on" exactly while the box has ipyevents' class
    assert f".{BOX_CLASS}.{WATCHED_CLASS} .rlhf-keys-off {{display:none}}" in line
    assert f".{BOX_CLASS}.{WATCHED_CLASS} .rlhf-keys-on {{display:inline}}" in line
    off = re.search(r"<span class='rlhf-keys-off'[^>]*>(.*?)</span>", line).group(1)
    assert "move the mouse over this box" in off


def test_a_clicked_button_is_blurred_once_its_answer_is_saved(tmp_path, pairs, monkeypatch):
    """Its focus outline would otherwise stay on and make the next pair look pre-selected."""
    path = tmp_path / "labels.jsonl"
    sent = []   # (button, message, events on disk when it was sent)
    monkeypatch.setattr(widgets.Button, "send", lambda self, content, buffers=None:
                        sent.append((self.description, content, len(on_disk(path)))))
    widget = LabelingWidget(LabelStore(path), pairs)
    widget.buttons["A better"].click()
    assert sent == [("A better", {"do": "blur"}, 1)]
    widget._on_key({"type": "keydown", "key": "b"})       # a key focuses no button
    widget.buttons["Undo"].click()
    assert sent == [("A better", {"do": "blur"}, 1), ("Undo", {"do": "blur"}, 3)]


def test_where_widgets_are_not_rendered_the_output_reads_one_line(tmp_path, pairs):
    """A saved notebook opened before its cells run shows an output's text/plain."""
    from IPython.core.formatters import DisplayFormatter

    widget = LabelingWidget(LabelStore(tmp_path / "labels.jsonl"), pairs)
    data, _ = DisplayFormatter().format(widget)           # what a notebook saves for the cell
    assert data["text/plain"] == FALLBACK_TEXT == repr(widget)
    assert FALLBACK_TEXT == "Labeling widget: run this cell to label pairs"
    assert data["application/vnd.jupyter.widget-view+json"]["model_id"] == widget.box.model_id


def test_resumes_where_the_learner_stopped(tmp_path, pairs):
    path = tmp_path / "labels.jsonl"
    widget = LabelingWidget(LabelStore(path), pairs)
    for name in ["A better", "Skip", "B better"]:
        widget.buttons[name].click()
    shown = widget.current
    # a kernel restart: a new process, a new store on the same file, a new widget
    code = ("import sys, json; from rlhf_lite.label_store import LabelStore; "
            "from rlhf_lite.widget import LabelingWidget; "
            "w = LabelingWidget(LabelStore(sys.argv[1]), json.loads(sys.argv[2])); "
            "print(json.dumps(w.current)); w.buttons['Tie'].click()")
    widget.store.close()
    out = subprocess.run([sys.executable, "-c", code, str(path), json.dumps(pairs)],
                         capture_output=True, text=True, check=True).stdout
    assert tuple(json.loads(out)) == shown == (pairs[3][0], *shown_sides(pairs[3]))
    store = LabelStore(path)
    assert [c.prompt for c in store.comparisons()] == [pairs[i][0] for i in (0, 2, 3)]
    assert LabelingWidget(store, pairs).current[0] == pairs[4][0]


def test_when_all_are_done_only_undo_is_left(tmp_path, pairs):
    widget = LabelingWidget(LabelStore(tmp_path / "labels.jsonl"), pairs[:2])
    widget.buttons["A better"].click()
    widget.buttons["A better"].click()
    assert widget.current is None
    assert [b.disabled for b in widget.buttons.values()] == [True] * 5 + [False]
    assert "All pairs done" in widget._prompt.value
    widget.buttons["Undo"].click()
    assert widget.current[0] == pairs[1][0] and not widget.buttons["Tie"].disabled


def test_the_learners_clicks_win_over_the_simulated_fill(tmp_path, world, pairs):
    store = LabelStore(tmp_path / "labels.jsonl")
    widget = LabelingWidget(store, pairs)
    widget.buttons["A better"].click()
    fill_unlabeled(store, pairs, SimulatedLabeler(world, seed=0), verbose=False)
    assert widget.current[0] == pairs[1][0]               # the fill does not label for you
    widget.buttons["Tie"].click()                          # after Run All, you can still label
    assert store.counts(pairs) == {"you": 2, "sim-helpful": 10}
    tie = next(c for c in store.comparisons() if c.prompt == pairs[1][0])
    assert tie.tie and tie.labeler == "you"


def test_progress_counts_the_pairs_meant_for_you_and_later_labels_count(tmp_path, pairs, world):
    """The bar counts the first ``hand_pairs`` (the same for everyone); the text says how many are
    yours and that a stand-in with your taste labels the rest; going on past them is welcome."""
    from rlhf_lite.taste import training_labels
    from rlhf_lite.widget import HAND_PAIRS

    assert HAND_PAIRS == 40
    path = tmp_path / "labels.jsonl"
    widget = LabelingWidget(LabelStore(path), pairs, hand_pairs=4)

    def progress():
        return re.sub("<[^>]+>", "", html.unescape(widget._progress.value)).replace("\xa0", " ")
    assert widget._progress_bar.max == 4 and "0 / 4 pairs for you" in progress()
    assert "The other 12 pairs get their labels from a stand-in with your taste" in progress()
    for name in ["A better", "Skip", "B better", "Tie"]:
        widget.buttons[name].click()
    assert widget._progress_bar.value == 4 and "4 / 4" in progress()
    assert "3 labeled by you, 1 skipped" in progress()
    assert "Thank you! Going on is welcome" in progress() and widget.current[0] == pairs[4][0]
    widget.buttons["A better"].click()                     # a fifth, past the ones meant for you
    assert "and 1 more after them" in progress() and widget._progress_bar.value == 4
    assert "The other 8 pairs" in progress()               # 12 - 3 - 1: the skipped one included
    got = training_labels(path, world, pairs)
    assert (got.yours, got.stand_in) == (4, 8)


HOLD = ("import sys; from rlhf_lite.label_store import LabelStore; s = LabelStore(sys.argv[1]); "
        "s.lock(); print('locked', flush=True); sys.stdin.readline()")


def test_a_second_kernel_cannot_label_the_same_file(tmp_path, pairs):
    path = tmp_path / "labels.jsonl"
    child = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE,
                             stdin=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(LabelStoreLockedError, match=str(child.pid)):
            LabelingWidget(LabelStore(path), pairs)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()


def test_a_failed_write_is_shown_and_the_pair_stays(tmp_path, pairs, caplog):
    path = tmp_path / "labels.jsonl"
    widget = LabelingWidget(LabelStore(path), pairs)
    with caplog.at_level(logging.INFO, logger="rlhf_lite"):
        LabelStore(path).lock()                            # a newer store took the file
    assert "takes over" in caplog.text                     # said quietly: nothing is wrong
    before = widget.current
    widget.buttons["A better"].click()
    assert widget.current == before and not path.read_text()
    assert "Not saved" in widget._status.value and "newer LabelStore" in widget._status.value


def test_pair_keys_ignore_order():
    assert pair_key(("p", "a", "b")) == pair_key(("p", "b", "a")) != pair_key(("q", "a", "b"))
