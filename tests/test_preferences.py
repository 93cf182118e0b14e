"""The label store: durable, append-only, strict about malformed files, one writer at a time;
the TRL export; the simulated fill; position bias read back from the recorded sides; what scores
lose against comparisons (a drifting rater, a crowd that scores a few items each)."""
import collections
import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
import warnings

import pytest

from rlhf_lite import SimulatedLabeler
from rlhf_lite.models import build_tokenizer, make_base_model
from rlhf_lite.label_store import (LabelStore, LabelStoreError, LabelStoreLockedError,
                                   LabelStoreWarning, fill_unlabeled, left_choice_rate,
                                   shown_sides)
from rlhf_lite.preferences import (Comparison, crowd_scores, draw_pairs, gold_agreement,
                                   normalise_per_rater, pair_key, preferences_from_scores,
                                   read_trl_jsonl, score_session, write_trl_jsonl)


def world_pairs(world, n, seed=0):
    """n distinct (prompt, completion_1, completion_2) pairs of corpus answers in random styles."""
    rng = random.Random(seed)
    styles = ["terse", "sentence", "friendly", "rambling", "rude", "wrong", "evasive", "off_topic"]
    pairs, seen = [], set()
    while len(pairs) < n:
        prompt = rng.choice(world.prompts)
        a, b = (world.task.answer(prompt, s, rng) for s in rng.sample(styles, 2))
        if a != b and pair_key((prompt, a, b)) not in seen:
            seen.add(pair_key((prompt, a, b)))
            pairs.append((prompt, a, b))
    return pairs


def run_child(code, *args, **kwargs):
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], stdout=subprocess.PIPE,
                            stdin=subprocess.PIPE, text=True, **kwargs)


# --- durability ------------------------------------------------------------------------------

LABEL_FOREVER = r"""
import random, sys, time
from rlhf_lite.label_store import LabelStore
store = LabelStore(sys.argv[1])
i = 0
while True:
    time.sleep(random.uniform(0.002, 0.01))   # a labeler thinks between clicks
    event = store.label(f"prompt {i}", "left answer " * (i % 97), "right " * (i % 89),
                        "AB"[i % 2], "child")
    print(event["id"], flush=True)   # acknowledged: the store has returned
    i += 1
"""


def test_sigkill_loses_no_acknowledged_label(tmp_path):
    path = tmp_path / "labels.jsonl"
    child = run_child(LABEL_FOREVER, path)
    acked = []
    for line in child.stdout:
        acked.append(int(line))
        if len(acked) == 257:
            break
    time.sleep(random.uniform(0, 0.05))   # strike at some moment of a write, not right after one
    os.kill(child.pid, signal.SIGKILL)
    acked += [int(line) for line in child.stdout if line.strip()]  # printed before the kill
    child.wait()
    assert child.returncode == -signal.SIGKILL
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LabelStoreWarning)  # the kill may cut the last line
        store = LabelStore(path)
    ids = {e["id"] for e in store.events}
    assert len(acked) >= 257
    assert set(acked) <= ids, f"acknowledged but lost: {sorted(set(acked) - ids)[:10]}"
    assert sorted(ids) == list(range(1, len(ids) + 1))
    # the dead writer's lock does not block: the OS dropped it with the process
    assert store.label("after", "x", "y", "A")["id"] == max(ids) + 1


def test_truncated_last_line_is_set_aside_and_reported(tmp_path):
    path = tmp_path / "labels.jsonl"
    with LabelStore(path) as store:
        for i in range(3):
            store.label(f"p{i}", "a", "b", "A")
    cut = b'{"id": 4, "event": "label", "time": "2026", "labeler": "you", "pro'
    with open(path, "ab") as f:
        f.write(cut)
    with pytest.warns(LabelStoreWarning,
                      match=r"labels\.jsonl:4: the last line is cut off mid-write"):
        store = LabelStore(path)
    assert len(store.set_aside) == 1 and "labels.jsonl.setaside" in store.set_aside[0]
    assert [e["id"] for e in store.events] == [1, 2, 3]
    assert (tmp_path / "labels.jsonl.setaside").read_bytes() == cut + b"\n"
    assert path.read_bytes().endswith(b"}\n")          # the main file is whole again
    assert store.label("p4", "a", "b", "B")["id"] == 4
    assert [e["id"] for e in LabelStore(path).events] == [1, 2, 3, 4]


def test_a_line_in_flight_is_left_alone_while_someone_writes(tmp_path):
    path = tmp_path / "labels.jsonl"
    writer = LabelStore(path)
    writer.label("p", "a", "b", "A")
    with open(path, "ab") as f:
        f.write(b'{"id": 2, "ev')   # what a reader can see mid-write
    before = path.read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reader = LabelStore(path)
    assert [e["id"] for e in reader.events] == [1] and path.read_bytes() == before
    writer.close()


def test_a_complete_last_line_without_newline_is_kept(tmp_path):
    path = tmp_path / "labels.jsonl"
    with LabelStore(path) as store:
        store.label("p0", "a", "b", "A")
    path.write_bytes(path.read_bytes().rstrip(b"\n"))
    store = LabelStore(path)
    assert len(store.comparisons()) == 1 and not store.set_aside
    store.label("p1", "a", "b", "B")
    assert [e["id"] for e in LabelStore(path).events] == [1, 2]


GOOD = {"id": 1, "event": "label", "time": "t", "labeler": "you", "prompt": "p", "left": "a",
        "right": "b", "choice": "A"}


@pytest.mark.parametrize("line, message", [
    ('{"id": 2, "event": "label", "prompt": ', "not valid JSON"),
    ('[1, 2]', "a label event is a JSON object"),
    (json.dumps(dict(GOOD, id=2, event="vote")), "unknown event 'vote'"),
    (json.dumps({k: v for k, v in dict(GOOD, id=2).items() if k != "prompt"}),
     "this label event lacks prompt"),
    (json.dumps(dict(GOOD, id=2, left=3)), "left must be str"),
    (json.dumps(dict(GOOD, id=2, choice="C")), "choice 'C' is none of"),
    (json.dumps(dict(GOOD, id=1)), "id 1 does not follow id 1"),
    (json.dumps({"id": 2, "event": "undo", "time": "t", "labeler": "you", "undoes": 7}),
     "undoes event 7, which is no label or skip still in force"),
    (b'{"id": 2, "prompt": "\xff"}', "not UTF-8"),
])
@pytest.mark.parametrize("last", [False, True], ids=["middle", "last-with-newline"])
def test_malformed_lines_name_file_and_line(tmp_path, line, message, last):
    path = tmp_path / "labels.jsonl"
    line = line if isinstance(line, bytes) else line.encode()
    good_after = json.dumps(dict(GOOD, id=9)).encode()
    path.write_bytes(json.dumps(GOOD).encode() + b"\n" + line + b"\n"
                     + (b"" if last else good_after + b"\n"))
    before = path.read_bytes()
    with pytest.raises(LabelStoreError, match=f"labels.jsonl:2: {message}"):
        LabelStore(path)
    assert path.read_bytes() == before   # an error never rewrites the file


# --- one writer at a time ---------------------------------------------------------------------

HOLD_LOCK = r"""
import sys
from rlhf_lite.label_store import LabelStore
store = LabelStore(sys.argv[1])
store.label("from the child", "a", "b", "A", "child")
print("locked", flush=True)
sys.stdin.readline()
"""


def test_the_lock_refuses_a_second_writer_until_the_first_dies(tmp_path):
    path = tmp_path / "labels.jsonl"
    child = run_child(HOLD_LOCK, path)
    try:
        assert child.stdout.readline().strip() == "locked"
        store = LabelStore(path)
        assert [c.prompt for c in store.comparisons()] == ["from the child"]  # reads need no lock
        with pytest.raises(LabelStoreLockedError, match=f"process {child.pid}"):
            store.label("second writer", "a", "b", "A")
        assert len(LabelStore(path).events) == 1
    finally:
        os.kill(child.pid, signal.SIGKILL)   # a stale lock would now block forever
        child.wait()
    assert store.label("second writer", "a", "b", "A")["id"] == 2   # re-read under the lock


def test_in_one_process_the_newer_store_takes_over(tmp_path, caplog):
    path = tmp_path / "labels.jsonl"
    older, newer = LabelStore(path), LabelStore(path)
    older.label("p0", "a", "b", "A")
    with caplog.at_level(logging.INFO, logger="rlhf_lite"), warnings.catch_warnings():
        warnings.simplefilter("error")                   # a cell run twice: no warning
        assert newer.label("p1", "a", "b", "B")["id"] == 2
    assert "takes over" in caplog.text
    with pytest.raises(LabelStoreLockedError, match="newer LabelStore"):
        older.label("p2", "a", "b", "A")
    newer.close()
    assert [e["id"] for e in LabelStore(path).events] == [1, 2]


# --- what the labels say -------------------------------------------------------------------

def test_resume_undo_and_sides_after_reloading(tmp_path):
    path = tmp_path / "labels.jsonl"
    with LabelStore(path) as store:
        store.label("p0", "left0", "right0", "A", swapped=True)
        store.label("p1", "left1", "right1", "B")
        store.skip("p2", "left2", "right2")
        store.label("p3", "left3", "right3", "tie")
        assert store.undo()["prompt"] == "p3"
        store.label("p4", "left4", "right4", "both_bad")
    store = LabelStore(path)
    assert ([e["event"] for e in store.events]
            == ["label", "label", "skip", "label", "undo", "label"])
    assert store.comparisons() == [Comparison("p0", "left0", "right0", labeler="you"),
                                   Comparison("p1", "right1", "left1", labeler="you"),
                                   Comparison("p4", "left4", "right4", both_bad=True,
                                              labeler="you")]
    assert store.events[0]["swapped"] is True and store.events[0]["left"] == "left0"
    assert store.done("you") == {pair_key((f"p{i}", f"left{i}", f"right{i}")) for i in (0, 1, 2, 4)}
    assert store.undo("you")["prompt"] == "p4"
    assert store.undo("you")["event"] == "skip"
    assert store.undo("nobody") is None
    assert store.events[-1]["id"] == 8 and len(LabelStore(path).comparisons()) == 2


def test_the_learners_label_wins_over_the_simulated_one(tmp_path):
    store = LabelStore(tmp_path / "labels.jsonl")
    store.label("p", "x", "y", "A", "sim-helpful", simulated=True)
    store.label("p", "y", "x", "A", "you")   # same pair, other sides
    store.label("p", "x", "y", "A", "sim-concise", simulated=True)
    assert store.comparisons() == [Comparison("p", "y", "x", labeler="you")]
    store.undo("you")
    assert store.comparisons() == [Comparison("p", "x", "y", labeler="sim-concise")]


def test_trl_round_trip(tmp_path):
    store = LabelStore(tmp_path / "labels.jsonl")
    for i, choice in enumerate(["A", "B", "tie", "both_bad", "B"]):
        store.label(f"p{i}", f"left {i} \u00e9", f"right {i}", choice)
    out = tmp_path / "trl" / "preferences.jsonl"
    assert store.export_trl(out) == 3   # ties and both-bad carry no preference
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert rows[1] == {"prompt": "p1", "chosen": " right 1", "rejected": " left 1 \u00e9"}
    back = read_trl_jsonl(out)
    assert [(c.prompt, c.chosen, c.rejected) for c in back] == \
        [(c.prompt, c.chosen, c.rejected) for c in store.comparisons() if not (c.tie or c.both_bad)]
    assert write_trl_jsonl(back, tmp_path / "again.jsonl") == 3
    assert (tmp_path / "again.jsonl").read_bytes() == out.read_bytes()
    datasets = pytest.importorskip("datasets")
    assert datasets.Dataset.from_json(str(out)).column_names == ["prompt", "chosen", "rejected"]


def test_trl_reader_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n'
                    '{"prompt": "p", "chosen": "a"}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: lacks rejected"):
        read_trl_jsonl(path)
    path.write_text('{"prompt": "p"\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:1: not valid JSON"):
        read_trl_jsonl(path)


def test_fill_labels_only_what_nobody_labeled_and_says_who(tmp_path, world, capsys):
    pairs = world_pairs(world, 40)
    store = LabelStore(tmp_path / "labels.jsonl")
    for pair in pairs[:5]:
        left, right, swapped = shown_sides(pair)
        store.label(pair[0], left, right, "A", swapped=swapped)
    store.skip(*pairs[5])
    labeler = SimulatedLabeler(world, "helpful", temperature=0.05, seed=1)
    counts = fill_unlabeled(store, pairs, labeler)
    assert counts == {"you": 5, "sim-helpful": 35}
    assert ("40 of 40 pairs labeled: 35 by sim-helpful, 5 by you (35 filled just now)"
            in capsys.readouterr().out)
    filled = [e for e in store.events if e.get("simulated")]
    for e in filled:   # recorded on the widget's sides, chosen as a careful labeler would
        pair = next(p for p in pairs
                    if pair_key(p) == pair_key((e["prompt"], e["left"], e["right"])))
        assert (e["left"], e["right"], e["swapped"]) == shown_sides(pair)
        gold_left, gold_right = (world.gold(e["prompt"], e["left"]),
                                 world.gold(e["prompt"], e["right"]))
        if abs(gold_left - gold_right) > 1:
            assert e["choice"] == ("A" if gold_left > gold_right else "B")
    assert fill_unlabeled(store, pairs, labeler, verbose=False) == counts
    assert len(store.events) == 5 + 1 + 35


def test_position_bias_is_measurable_from_the_recorded_sides(tmp_path, world):
    pairs = world_pairs(world, 800, seed=1)
    rates = {}
    for bias in (0.0, 1.0):
        store = LabelStore(tmp_path / f"bias{bias}.jsonl")
        fill_unlabeled(store, pairs,
                       SimulatedLabeler(world, temperature=2.0, position_bias=bias, seed=2),
                       verbose=False)
        rates[bias] = left_choice_rate(store.current_labels())
    swapped = [e["swapped"] for e in store.events]
    assert 0.4 < sum(swapped) / len(swapped) < 0.6      # sides were a fair coin
    assert abs(rates[0.0][2]) < 3 and rates[0.0][1] == 800
    assert rates[1.0][2] > 5 and rates[1.0][0] > 0.6


def test_draw_pairs_gives_distinct_pairs(world):
    tokenizer = build_tokenizer(world)
    model = make_base_model(tokenizer).eval()   # untrained: random words, fast
    pairs = draw_pairs(world, model, tokenizer, 50, seed=3)
    assert len(pairs) == 50 and len({pair_key(p) for p in pairs}) == 50
    assert all(a != b for _, a, b in pairs)
    train, _ = world.split_prompts()
    assert {p for p, _, _ in pairs} <= set(train)


# --- scores against comparisons ----------------------------------------------------------------

def test_the_order_of_two_scores_is_a_bradley_terry_choice(world):
    prompt = "Question: What is the capital of France? Answer:"
    for a, b, temperature in [("Paris.", "The capital of France is Paris.", 1.0),
                              ("Ugh, paris. Obviously.", "Paris.", 2.0)]:
        rater = SimulatedLabeler(world, temperature=temperature, seed=4)
        wins = sum(rater.score(prompt, a, 0.7, 3.0) > rater.score(prompt, b, 0.7, 3.0)
                   for _ in range(4000)) / 4000
        assert abs(wins - rater.prob_left(prompt, a, b)) < 0.025, (a, b, wins)


def test_score_session_rounds_clips_drifts_and_shuffles(world):
    prompt = "Question: What is the capital of France? Answer:"
    items = [(prompt, "The capital of France is Paris.")] * 400
    steady = score_session(SimulatedLabeler(world, seed=5), items, 1.0, 5.0)
    drifting = score_session(SimulatedLabeler(world, seed=5), items, 1.0, 5.0, drift=-4.0)
    assert all(isinstance(s, int) and 1 <= s <= 10 for s in steady + drifting)
    assert sum(steady) / 400 > 9                       # u = 5 on offset 5: mostly clipped at 10
    first, last = sum(drifting[:100]) / 100, sum(drifting[-100:]) / 100
    assert 2.5 < first - last < 3.5                    # the offset fell by 4 * (0.875 - 0.125) = 3
    shuffled = score_session(SimulatedLabeler(world, seed=5), items, 1.0, 5.0, -4.0, order_seed=1)
    assert abs(sum(shuffled[:100]) - sum(shuffled[-100:])) / 100 < 1   # drift spread over both
    assert preferences_from_scores([3, 5, 5, 3, 4, 4]) == ["B", "A", None]
    with pytest.raises(ValueError, match="two scores a pair"):
        preferences_from_scores([1, 2, 3])


def test_gold_agreement_counts_a_tie_as_a_coin_flip(world):
    prompt = "Question: What is the capital of France? Answer:"
    pairs = [(prompt, "Paris.", "Rome."), (prompt, "Rome.", "Paris."), (prompt, "Paris.", "Paris!")]
    agreement = gold_agreement(world, pairs, ["A", None, "B"])   # the last pair ties in gold
    assert (agreement.value, agreement.n) == (0.75, 2)
    assert agreement.low < 0.75 < agreement.high


def test_drift_costs_scores_what_it_never_costs_comparisons(world):
    pairs = world_pairs(world, 600, seed=6)
    items = [(p, t) for p, a, b in pairs for t in (a, b)]
    agreement = {}
    for drift in (0.0, -4.0):     # each answer scored on its own, at a random moment
        rater = SimulatedLabeler(world, seed=7)
        scores = score_session(rater, items, 0.6, 6.5, drift, order_seed=6)
        agreement[drift] = gold_agreement(world, pairs, preferences_from_scores(scores)).value
    choices = [SimulatedLabeler(world, seed=7).choose(*pair) for pair in pairs]
    agreement["choices"] = gold_agreement(world, pairs, choices).value
    assert agreement[0.0] < agreement["choices"] + 0.02, agreement   # rounding ties cost a little
    assert agreement[-4.0] < agreement[0.0] - 0.03, agreement


def test_a_crowd_that_scores_a_few_items_each_cannot_be_normalised(world):
    items = [(p, a) for p, a, _ in world_pairs(world, 10)]
    scores, raters = crowd_scores(world, items, items_per_rater=4)
    assert len(scores) == 10 and sorted(collections.Counter(raters).values()) == [2, 4, 4]
    z = normalise_per_rater([1, 3, 5, 8, 8, 4], ["a", "a", "a", "b", "b", "c"])
    assert z == pytest.approx([-1.2247, 0, 1.2247, 0, 0, 0], abs=1e-4)

    pairs = world_pairs(world, 600, seed=8)
    items = [(p, t) for p, a, b in pairs for t in (a, b)]
    result = {}
    for k in (4, 100):
        scores, raters = crowd_scores(world, items, items_per_rater=k, seed=9)
        result[k] = [gold_agreement(world, pairs, preferences_from_scores(s)).value
                     for s in (scores, normalise_per_rater(scores, raters))]   # raw, normalised
    labeler = SimulatedLabeler(world, seed=9)
    choices = gold_agreement(world, pairs, [labeler.choose(*p) for p in pairs]).value
    assert result[4][1] < result[4][0] < choices - 0.03, (result, choices)  # 4 items: worse
    assert result[100][1] > result[100][0], result                         # 100 items: it helps
