"""Stage 1, on disk: the label store, where every judgement is the moment it is made.

A learner's labels are precious. ``LabelStore`` keeps them in an append-only JSON Lines file, one
event a line, written and fsynced before a call returns: a crash or a kernel restart loses no
click that was acknowledged. The widget (``widget.py``) writes to it; ``fill_unlabeled`` has a
simulated labeler label the pairs a person did not; ``left_choice_rate`` measures position bias.
"""
from __future__ import annotations

import atexit
import collections
import datetime
import errno
import json
import math
import os
import random
import re

from .label_file import (LabelFile, LabelStoreLockedError, LabelStoreWarning,  # noqa: F401
                         LabelStoreWriteError, close_all)
from .preferences import Comparison, pair_key
from .trl_format import from_trl, read_trl_jsonl, write_trl_jsonl


CHOICES = ("A", "B", "tie", "both_bad")
"""A label's choice: "A" = the answer shown on the left is better, "B" = the one on the right."""


def shown_sides(pair, seed: int = 0) -> tuple[str, str, bool]:
    """(left, right, swapped) for a (prompt, completion_1, completion_2) pair: a fair coin, seeded
    by the pair itself, so a pair shows on the same sides after a restart. Randomising the sides
    turns a labeler's position bias into noise, and makes it measurable (``left_choice_rate``).
    swapped: completion_1 is shown on the right."""
    prompt, a, b = pair
    swapped = random.Random(f"{seed}\x1f{prompt}\x1f{a}\x1f{b}").random() < 0.5
    return (b, a, True) if swapped else (a, b, False)


class LabelStoreError(ValueError):
    """A label file that cannot be read; the message names the file and the line."""


_FIELDS = {"label": dict(time=str, labeler=str, prompt=str, left=str, right=str, choice=str),
           "skip": dict(time=str, labeler=str, prompt=str, left=str, right=str),
           "undo": dict(time=str, labeler=str, undoes=int)}
_OPTIONAL = dict(simulated=bool, criteria=str, swapped=bool)   # may also be null
_FIX = "The file is plain JSON Lines: mend or delete that line in an editor, then load it again."


def _check_event(event: dict) -> str | None:
    """What is wrong with a label event, or None. The one rule for reading and for writing, so
    that the store never writes a line it would refuse to read."""
    kind = event.get("event")
    if kind not in _FIELDS:
        return f"unknown event {kind!r}; events are {', '.join(_FIELDS)}"
    required = dict(id=int, **_FIELDS[kind])
    optional = _OPTIONAL if kind != "undo" else {}
    missing = [k for k in required if k not in event]
    if missing:
        return f"this {kind} event lacks {', '.join(missing)}"
    for key, type_ in {**required, **optional}.items():
        value = event.get(key)
        if value is None and key in optional:
            continue
        if not isinstance(value, type_) or (type_ is int and isinstance(value, bool)):
            shown = "null" if value is None else repr(value)[:60]
            return f"{key} must be {type_.__name__}, got {shown}"
        if type_ is str:
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return f"{key} is not valid Unicode text (it holds a lone surrogate)"
    if kind == "label" and event["choice"] not in CHOICES:
        return f"choice {event['choice']!r} is none of {', '.join(CHOICES)}"
    return None


def _cut_off(raw: bytes) -> bool:
    """Is ``raw`` what an interrupted write leaves of a line this store writes: the start of a flat
    JSON object, cut short? A complete line that is wrong (a typo, Latin-1 bytes, line ends of
    a lone CR, nesting) is not: it is an error to mend, never a line to set aside."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.reason != "unexpected end of data":   # cut inside a character is a cut
            return False
        text = raw[:e.start].decode("utf-8", errors="replace")
    text = text.lstrip()
    if not text.startswith("{"):
        return False
    in_string = escaped = False
    for ch in text[1:]:   # our lines are flat objects: outside strings, no bracket may appear
        if in_string:
            escaped, in_string = (False, True) if escaped else (ch == "\\", ch != '"')
        elif ch == '"':
            in_string = True
        elif ch in "{}[]":
            return False
    heads = [text]
    if in_string:   # drop a half-written escape, then close the string (a key or a value)
        heads += [text[:-1], re.sub(r"\\u[0-9a-fA-F]{0,3}$", "", text)]
        fills = ['"', '":0']
    else:   # complete a half-written literal or number, a missing value or key
        fills = ["", "0", "rue", "ue", "e", "alse", "lse", "se", "ull", "ll", "l", '"":0', ":0"]
    for head in heads:
        for fill in fills:
            try:
                if isinstance(json.loads(head + fill + "}"), dict):
                    return True
            except ValueError:
                pass
    return False


class LabelStore:
    """Preference labels on append-only JSON Lines: one event a line, on disk when a call returns.

    Events (``id`` counts up from 1; ``time`` is UTC, ISO 8601)::

        {"id": 7, "event": "label", "time": "...", "labeler": "you", "simulated": false,
         "criteria": "helpful", "prompt": "...", "left": "...", "right": "...", "swapped": true,
         "choice": "A"}
        {"id": 8, "event": "skip", ...the same pair fields, no choice...}
        {"id": 9, "event": "undo", "time": "...", "labeler": "you", "undoes": 8}

    choice: "A" = the answer shown on the left is better, "B" = the one on the right, "tie",
    "both_bad". left/right: what was shown on each side; swapped: the pair's completion_1 was on
    the right (null: the sides were never shown, e.g. imported labels). Undo is an event of its
    own: nothing is ever rewritten.

    Durability: ``label``, ``skip``, ``undo`` and ``label_many`` check every field first (the
    writer accepts exactly what the reader does, so it never writes a line it cannot read) and
    return only after the line is written, flushed and fsynced. A write that fails (a full disk)
    is cut back out and raises ``LabelStoreWriteError``. A last line cut off by a kill is set
    aside in ``<file>.setaside`` with a ``LabelStoreWarning``; a line that is complete but wrong,
    anywhere, raises ``LabelStoreError`` naming the file and line (``label_file.py`` has the rest:
    full disks, links, editors, read-only files).

    One writer at a time: the first write takes an exclusive lock on the file itself (``flock``)
    until ``close()`` or the end of the process, whatever name or link reaches it. The OS drops
    that lock when the process dies, SIGKILL and kernel restarts included, so a stale lock cannot
    block anyone (``<file>.lock`` only records the writer's pid, for the error message). A store
    in another process gets ``LabelStoreLockedError``. In one process (a notebook run twice) the
    newer store takes over and the older one refuses to write. Reading never waits: lesson 2
    reads the file while lesson 1's kernel still holds it.

    One label is in force per pair (``pair_key``): the latest by a human labeler, else the latest
    simulated one, so the learner's own clicks always win over the simulated fill.
    """

    def __init__(self, path):
        self._file = LabelFile(path, self._parse_all)
        self.path = self._file.path                 # absolute: the same file after an os.chdir
        self.set_aside = self._file.set_aside       # reports of cut-off last lines
        self._file.load()

    # --- reading ------------------------------------------------------------------------------

    def reload(self) -> None:
        """Read the file again (to see what another process has written since)."""
        self._file.load()

    def _parse_all(self, data: bytes):
        """Events from ``data``; returns (cut, ends_open) as ``LabelFile`` wants them."""
        *lines, tail = data.split(b"\n")   # tail is b"" when the file ends with a newline
        self.events, self._active = [], {}
        for lineno, raw in enumerate(lines, 1):
            if raw.strip():
                self._apply(self._parse(raw, lineno), f"{self.path}:{lineno}")
        lineno = len(lines) + 1
        if not tail.strip():
            return None, False
        if _cut_off(tail):
            return (tail, len(data), lineno), False
        self._apply(self._parse(tail, lineno), f"{self.path}:{lineno}")  # complete but for "\n"
        return None, True

    def _parse(self, raw: bytes, lineno: int) -> dict:
        where = f"{self.path}:{lineno}"
        hint = (" (its line ends are a lone carriage return, \\r: convert them to \\n)"
                if b"\r" in raw.rstrip(b"\r") else "")
        try:
            event = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise LabelStoreError(f"{where}: not UTF-8 text (byte {raw[e.start]:#04x} at column "
                                  f"{e.start + 1}; saved as Latin-1?). {_FIX}") from None
        except RecursionError:
            raise LabelStoreError(f"{where}: nested too deeply to be a label event. "
                                  f"{_FIX}") from None
        except ValueError as e:
            raise LabelStoreError(f"{where}: not valid JSON ({e.msg}, column {e.colno}){hint}. "
                                  f"{_FIX}") from None
        if not isinstance(event, dict):
            raise LabelStoreError(f"{where}: a label event is a JSON object, got "
                                  f"{type(event).__name__}. {_FIX}")
        problem = _check_event(event)
        if problem:
            raise LabelStoreError(f"{where}: {problem}. {_FIX}")
        if self.events and event["id"] <= self.events[-1]["id"]:
            raise LabelStoreError(f"{where}: id {event['id']} does not follow id "
                                  f"{self.events[-1]['id']} (ids count up; lines out of order or "
                                  f"pasted twice?). {_FIX}")
        return event

    def _apply(self, event: dict, where: str) -> None:
        if event["event"] == "undo":
            if self._active.pop(event["undoes"], None) is None:
                raise LabelStoreError(f"{where}: undoes event {event['undoes']}, which is no label "
                                      f"or skip still in force. {_FIX}")
        else:
            self._active[event["id"]] = event
        self.events.append(event)

    # --- writing ------------------------------------------------------------------------------

    def lock(self) -> None:
        """Become the file's one writer now (writing does it too); see the class docstring."""
        self._file.lock()

    def close(self) -> None:
        """Stop writing and release the lock (the end of the process does it too)."""
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _write(self, events: list[dict], what: str) -> list[dict]:
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")
        events = [{"event": e.pop("event"), "time": now, **e} for e in events]
        for i, e in enumerate(events):   # refuse before anything is written
            problem = _check_event({"id": 1, **e})
            if problem:
                where = what if len(events) == 1 else f"{what} row {i}"
                raise ValueError(f"{where}: {problem}; nothing was written")
        for _ in range(3):
            self._file.prepare_write()
            next_id = self.events[-1]["id"] + 1 if self.events else 1
            written = [{"id": next_id + i, **e} for i, e in enumerate(events)]
            self._file.append("".join(json.dumps(e, ensure_ascii=False, allow_nan=False) + "\n"
                                      for e in written).encode("utf-8"))
            if self._file.still_ours():   # not replaced while we wrote: it is in the file
                for e in written:
                    self._apply(e, self.path)
                return written
        raise LabelStoreWriteError(errno.EBUSY, f"{self.path} keeps being replaced while this "
                                   "store writes it; nothing was saved. Close the other program")

    def label(self, prompt: str, left: str, right: str, choice: str, labeler: str = "you", *,
              swapped: bool | None = None, simulated: bool = False,
              criteria: str | None = None) -> dict:
        """Record that ``labeler`` judged ``left`` vs ``right`` as ``choice`` (see ``CHOICES``);
        returns the event (with its ``id``) once it is on disk."""
        return self._write([dict(event="label", labeler=labeler, simulated=simulated,
                                 criteria=criteria, prompt=prompt, left=left, right=right,
                                 swapped=swapped, choice=choice)], "label")[0]

    def label_many(self, labels) -> list[dict]:
        """Record many labels (dicts of ``label``'s arguments) with one write and one fsync."""
        events = []
        for i, row in enumerate(labels):
            missing = [k for k in ("prompt", "left", "right", "choice") if k not in row]
            if missing:
                raise ValueError(f"label_many row {i} lacks {', '.join(missing)}; "
                                 "nothing was written")
            events.append(dict(event="label", labeler=row.get("labeler", "you"),
                               simulated=row.get("simulated", False), criteria=row.get("criteria"),
                               prompt=row["prompt"], left=row["left"], right=row["right"],
                               swapped=row.get("swapped"), choice=row["choice"]))
        return self._write(events, "label_many") if events else []

    def skip(self, prompt: str, left: str, right: str, labeler: str = "you", *,
             swapped: bool | None = None) -> dict:
        """Record that ``labeler`` passed on this pair (a skip is no comparison)."""
        return self._write([dict(event="skip", labeler=labeler, prompt=prompt, left=left,
                                 right=right, swapped=swapped)], "skip")[0]

    def undo(self, labeler: str | None = None) -> dict | None:
        """Undo the latest label or skip still in force (by ``labeler``, if given), by recording an
        undo event; returns the event undone, or None when there is nothing to undo."""
        target = next((e for e in reversed(self._active.values())
                       if labeler is None or e["labeler"] == labeler), None)
        if target is None:
            return None
        self._write([dict(event="undo", labeler=labeler or target["labeler"],
                          undoes=target["id"])], "undo")
        return target

    def import_trl(self, source, labeler: str = "imported", tokenizer=None) -> list[dict]:
        """Add the pairs of a TRL preference file (a path: ``read_trl_jsonl``) or of rows (a list
        or a ``datasets.Dataset``: ``from_trl``) as labels by ``labeler``, in one durable write.
        Each is recorded with the chosen answer on the left (choice "A", or "tie"/"both_bad" for
        rows that say so) and ``swapped`` null: the sides were never shown. Pairs ``labeler``
        already has a label for are not added again. As for any label, the latest human one of a
        pair is in force: label after importing for your own labels to win. Returns the events
        written."""
        rows = (read_trl_jsonl(source, labeler, tokenizer) if isinstance(source, (str, os.PathLike))
                else from_trl(source, labeler, tokenizer))
        done = {pair_key((e["prompt"], e["left"], e["right"])) for e in self.current_labels()
                if e["labeler"] == labeler}
        new = []
        for c in rows:
            if pair_key((c.prompt, c.chosen, c.rejected)) not in done:
                done.add(pair_key((c.prompt, c.chosen, c.rejected)))
                new.append(dict(prompt=c.prompt, left=c.chosen, right=c.rejected, labeler=labeler,
                                choice="tie" if c.tie else "both_bad" if c.both_bad else "A"))
        return self.label_many(new)

    # --- what the labels say --------------------------------------------------------------------

    def done(self, labeler: str | None = None) -> set:
        """Keys (``pair_key``) of the pairs with a label or skip in force (by ``labeler``, if
        given)."""
        return {pair_key((e["prompt"], e["left"], e["right"])) for e in self._active.values()
                if labeler is None or e["labeler"] == labeler}

    def current_labels(self) -> list[dict]:
        """The label event in force for each pair, oldest first: the latest by a human labeler if
        there is one, else the latest simulated one."""
        best = {}
        for e in self._active.values():
            if e["event"] == "label":
                key = pair_key((e["prompt"], e["left"], e["right"]))
                old = best.get(key)
                if old is None or not e.get("simulated") or old.get("simulated"):
                    best[key] = e
        return sorted(best.values(), key=lambda e: e["id"])

    def comparisons(self) -> list[Comparison]:
        """A ``Comparison`` for each pair's label in force (skipped and undone pairs have none)."""
        out = []
        for e in self.current_labels():
            chosen, rejected = ((e["right"], e["left"]) if e["choice"] == "B"
                                else (e["left"], e["right"]))
            out.append(Comparison(e["prompt"], chosen, rejected, tie=e["choice"] == "tie",
                                  both_bad=e["choice"] == "both_bad", labeler=e["labeler"]))
        return out

    def counts(self, pairs=None) -> collections.Counter:
        """How many pairs (of ``pairs``, if given) each labeler's label in force covers."""
        keys = None if pairs is None else {pair_key(p) for p in pairs}
        return collections.Counter(
            e["labeler"] for e in self.current_labels()
            if keys is None or pair_key((e["prompt"], e["left"], e["right"])) in keys)

    def export_trl(self, path, ties: bool = False, both_bad: bool = False,
                   layout: str = "standard") -> int:
        """Write the comparisons in force as a TRL preference file (``write_trl_jsonl``: ties and
        both-bad pairs are left out and counted unless ``ties``/``both_bad``); returns the rows
        written. Refuses to write over the store's own file."""
        if os.path.exists(path) and os.path.samefile(path, self.path):
            raise ValueError(f"{os.fspath(path)} is this store's own label file: exporting there "
                             "would overwrite your labels. Export to another file, e.g. "
                             "preferences_trl.jsonl")
        return write_trl_jsonl(self.comparisons(), path, ties=ties, both_bad=both_bad,
                               layout=layout)

    def __len__(self) -> int:
        return len(self.current_labels())

    def __repr__(self) -> str:
        return f"LabelStore({self.path!r}: {len(self.events)} events, {len(self)} pairs labeled)"


atexit.register(close_all)


def fill_unlabeled(store: LabelStore, pairs, labeler, seed: int = 0,
                   verbose: bool = True) -> collections.Counter:
    """Label every pair of ``pairs`` that has no label yet with the simulated ``labeler``, shown on
    the sides the widget uses (``shown_sides``), in one durable write. Returns how many of the
    pairs each labeler's label covers, and says so. Pairs the learner skipped get filled too."""
    labeled = {pair_key((e["prompt"], e["left"], e["right"])) for e in store.current_labels()}
    rows = []
    for pair in pairs:
        if pair_key(pair) in labeled:
            continue
        labeled.add(pair_key(pair))
        left, right, swapped = shown_sides(pair, seed)
        rows.append(dict(prompt=pair[0], left=left, right=right, swapped=swapped,
                         labeler=labeler.name, choice=labeler.choose(pair[0], left, right),
                         simulated=True, criteria=labeler.criteria.name))
    store.label_many(rows)
    counts = store.counts(pairs)
    if verbose:
        who = ", ".join(f"{n} by {name}" for name, n in counts.most_common())
        print(f"{sum(counts.values())} of {len(pairs)} pairs labeled: {who} "
              f"({len(rows)} filled just now)")
    return counts


def left_choice_rate(labels) -> tuple[float, int, float]:
    """(rate, n, z): how often the answer shown on the *left* won, among the ``n`` decisive
    label events ("A" or "B") whose sides were recorded (``swapped`` not null: imported labels
    were never shown), and how many standard errors that is from 1/2.

    With the sides set by a fair coin, a labeler without position bias picks the left answer half
    the time up to noise (standard error 0.5 / sqrt(n)); |z| above ~3 is a bias you can trust."""
    decisive = [e["choice"] for e in labels
                if e["choice"] in ("A", "B") and e.get("swapped") is not None]
    n = len(decisive)
    if n == 0:
        return float("nan"), 0, float("nan")
    rate = decisive.count("A") / n
    return rate, n, (rate - 0.5) / (0.5 / math.sqrt(n))
