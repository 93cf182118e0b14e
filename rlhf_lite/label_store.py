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
import json
import math
import os
import random
import warnings

from .preferences import Comparison, pair_key, write_trl_jsonl


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


class LabelStoreLockedError(RuntimeError):
    """Another ``LabelStore`` is writing this file."""


class LabelStoreWarning(UserWarning):
    """Something in a label file was set aside (a last line cut off by a crash)."""


_FIELDS = {"label": dict(time=str, labeler=str, prompt=str, left=str, right=str, choice=str),
           "skip": dict(time=str, labeler=str, prompt=str, left=str, right=str),
           "undo": dict(time=str, labeler=str, undoes=int)}
_OPTIONAL = dict(simulated=bool, criteria=str, swapped=bool)
_FIX = "The file is plain JSON Lines: mend or delete that line in an editor, then load it again."
_WRITERS: dict[str, "LabelStore"] = {}   # real path -> the store of this process that writes it

try:
    import fcntl

    def _try_lock(fd) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError:
            return False

    def _unlock(fd) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)
except ImportError:  # Windows: a byte-range lock, also dropped by the OS when its process dies
    import msvcrt

    def _try_lock(fd) -> bool:
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False

    def _unlock(fd) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)


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
    the right. Undo is an event of its own: nothing is ever rewritten.

    Durability: ``label``, ``skip``, ``undo`` and ``label_many`` return only after the line is
    written, flushed and fsynced. A crash *during* a write can leave the last line cut off: on
    loading, it is moved to ``<file>.setaside`` with a ``LabelStoreWarning`` and the store goes
    on. Any other malformed line raises ``LabelStoreError`` naming the file and line.

    One writer at a time: the first write takes an exclusive lock (``flock`` on ``<file>.lock``)
    until ``close()`` or the end of the process. The OS drops that lock when the process dies,
    SIGKILL and kernel restarts included, so a stale lock cannot block anyone: the lock file left
    on disk is just where the lock lives (it holds the writer's pid for the error message; it is
    never deleted, which could let two writers lock two different files). A store in another
    process gets ``LabelStoreLockedError``. In one process (a notebook run twice) the newer store
    takes over and the older one refuses to write. Reading never locks: lesson 2 reads the file
    while lesson 1's kernel still holds it.

    One label is in force per pair (``pair_key``): the latest by a human labeler, else the latest
    simulated one, so the learner's own clicks always win over the simulated fill.
    """

    def __init__(self, path):
        self.path = os.fspath(path)
        self.set_aside: list[str] = []   # reports of cut-off lines moved to <file>.setaside
        self._fd = self._lock_fd = None
        self._superseded = False
        self._load()

    # --- reading ------------------------------------------------------------------------------

    def reload(self) -> None:
        """Read the file again (to see what another process has written since)."""
        self._load()

    def _load(self) -> None:
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            data = b""
        *lines, tail = data.split(b"\n")   # tail is b"" when the file ends with a newline
        self.events, self._active = [], {}
        for lineno, raw in enumerate(lines, 1):
            if raw.strip():
                self._apply(self._parse(raw, lineno), f"{self.path}:{lineno}")
        if not tail.strip():
            return
        lineno = len(lines) + 1
        try:
            json.loads(tail)
        except ValueError:   # cut off mid-write
            self._set_aside_unless_in_flight(tail, len(data), lineno)
            return
        self._apply(self._parse(tail, lineno), f"{self.path}:{lineno}")  # complete but for "\n"
        if self._lock_fd is not None:
            self._append(b"\n")

    def _set_aside_unless_in_flight(self, tail: bytes, size: int, lineno: int) -> None:
        """While another store holds the lock, a cut last line is its write in flight: leave it."""
        if self._lock_fd is not None:
            return self._set_aside(tail, size, lineno)
        fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if _try_lock(fd):
                try:
                    self._set_aside(tail, size, lineno)
                finally:
                    _unlock(fd)
        finally:
            os.close(fd)

    def _set_aside(self, tail: bytes, size: int, lineno: int) -> None:
        aside = self.path + ".setaside"
        with open(aside, "ab") as f:
            f.write(tail + b"\n")
            f.flush()
            os.fsync(f.fileno())
        with open(self.path, "rb+") as f:
            f.truncate(size - len(tail))
            os.fsync(f.fileno())
        report = (f"{self.path}:{lineno}: the last line was cut off mid-write ({len(tail)} bytes, "
                  f"a crash while labeling); it is set aside in {aside} and the store goes on without it")
        self.set_aside.append(report)
        warnings.warn(report, LabelStoreWarning, stacklevel=5)

    def _parse(self, raw: bytes, lineno: int) -> dict:
        where = f"{self.path}:{lineno}"
        try:
            event = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise LabelStoreError(f"{where}: not UTF-8 text. {_FIX}") from None
        except ValueError as e:
            raise LabelStoreError(f"{where}: not valid JSON ({e.msg}, column {e.colno}). {_FIX}") from None
        if not isinstance(event, dict):
            raise LabelStoreError(f"{where}: a label event is a JSON object, got {type(event).__name__}. {_FIX}")
        kind = event.get("event")
        if kind not in _FIELDS:
            raise LabelStoreError(f"{where}: unknown event {kind!r}; events are {', '.join(_FIELDS)}. {_FIX}")
        fields = dict(id=int, **_FIELDS[kind], **(_OPTIONAL if kind != "undo" else {}))
        missing = [k for k in dict(id=int, **_FIELDS[kind]) if k not in event]
        if missing:
            raise LabelStoreError(f"{where}: this {kind} event lacks {', '.join(missing)}. {_FIX}")
        for key, kind_ in fields.items():
            value = event.get(key)
            if value is not None and (not isinstance(value, kind_) or (kind_ is int and isinstance(value, bool))):
                raise LabelStoreError(f"{where}: {key} must be {kind_.__name__}, got {value!r}. {_FIX}")
        if kind == "label" and event["choice"] not in CHOICES:
            raise LabelStoreError(f"{where}: choice {event['choice']!r} is none of {', '.join(CHOICES)}. {_FIX}")
        if self.events and event["id"] <= self.events[-1]["id"]:
            raise LabelStoreError(f"{where}: id {event['id']} does not follow id {self.events[-1]['id']} "
                                  f"(ids count up; lines out of order or pasted twice?). {_FIX}")
        return event

    def _apply(self, event: dict, where: str) -> None:
        if event["event"] == "undo":
            if self._active.pop(event["undoes"], None) is None:
                raise LabelStoreError(f"{where}: undoes event {event['undoes']}, which is no label or "
                                      f"skip still in force. {_FIX}")
        else:
            self._active[event["id"]] = event
        self.events.append(event)

    # --- writing ------------------------------------------------------------------------------

    def lock(self) -> None:
        """Become the file's one writer now (writing does it too); see the class docstring."""
        if self._lock_fd is not None:
            return
        if self._superseded:
            raise LabelStoreLockedError(f"{self.path}: a newer LabelStore on this file took over in this "
                                        "process; write through that one")
        key = os.path.realpath(self.path)
        older = _WRITERS.get(key)
        if older is not None and older is not self:
            older.close()
            older._superseded = True
            warnings.warn(f"{self.path}: this LabelStore takes over from an older one on the same file "
                          "in this process; the older one now refuses to write", LabelStoreWarning, stacklevel=3)
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        if not _try_lock(fd):
            os.close(fd)
            try:
                with open(self.path + ".lock") as f:
                    holder = f"process {f.read().strip() or '?'}"
            except OSError:
                holder = "another process"
            raise LabelStoreLockedError(
                f"{self.path} is being written by another LabelStore ({holder}). Close that one "
                "(store.close(), or shut down its notebook's kernel) or label into another file. "
                "Reading needs no lock: LabelStore(path).comparisons() works meanwhile.")
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd
        _WRITERS[key] = self
        created = not os.path.exists(self.path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if created:  # make the new file's directory entry durable too
            dir_fd = os.open(os.path.dirname(os.path.abspath(self.path)), os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            except OSError:
                pass
            finally:
                os.close(dir_fd)
        self._load()   # what was written before we held the lock; mends a cut last line

    def close(self) -> None:
        """Stop writing and release the lock (the end of the process does it too)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._lock_fd is not None:
            _unlock(self._lock_fd)
            os.close(self._lock_fd)
            self._lock_fd = None
        if _WRITERS.get(os.path.realpath(self.path)) is self:
            del _WRITERS[os.path.realpath(self.path)]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _append(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]
        os.fsync(self._fd)

    def _write(self, events: list[dict]) -> list[dict]:
        self.lock()
        next_id = self.events[-1]["id"] + 1 if self.events else 1
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")
        events = [{"id": next_id + i, "event": e.pop("event"), "time": now, **e} for i, e in enumerate(events)]
        self._append("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in events).encode("utf-8"))
        for e in events:
            self._apply(e, self.path)
        return events

    def label(self, prompt: str, left: str, right: str, choice: str, labeler: str = "you", *,
              swapped: bool | None = None, simulated: bool = False, criteria: str | None = None) -> dict:
        """Record that ``labeler`` judged ``left`` vs ``right`` as ``choice`` (see ``CHOICES``);
        returns the event (with its ``id``) once it is on disk."""
        return self.label_many([dict(prompt=prompt, left=left, right=right, choice=choice, labeler=labeler,
                                     swapped=swapped, simulated=simulated, criteria=criteria)])[0]

    def label_many(self, labels) -> list[dict]:
        """Record many labels (dicts of ``label``'s arguments) with one write and one fsync."""
        events = []
        for row in labels:
            if row["choice"] not in CHOICES:
                raise ValueError(f"choice {row['choice']!r} is none of {', '.join(CHOICES)}")
            event = dict(event="label", labeler=row.get("labeler", "you"),
                         simulated=bool(row.get("simulated", False)), criteria=row.get("criteria"),
                         prompt=row["prompt"], left=row["left"], right=row["right"],
                         swapped=row.get("swapped"), choice=row["choice"])
            events.append(event)
        return self._write(events) if events else []

    def skip(self, prompt: str, left: str, right: str, labeler: str = "you", *,
             swapped: bool | None = None) -> dict:
        """Record that ``labeler`` passed on this pair (a skip is no comparison)."""
        return self._write([dict(event="skip", labeler=labeler, prompt=prompt, left=left, right=right,
                                 swapped=swapped)])[0]

    def undo(self, labeler: str | None = None) -> dict | None:
        """Undo the latest label or skip still in force (by ``labeler``, if given), by recording an
        undo event; returns the event undone, or None when there is nothing to undo."""
        target = next((e for e in reversed(self._active.values())
                       if labeler is None or e["labeler"] == labeler), None)
        if target is None:
            return None
        self._write([dict(event="undo", labeler=labeler or target["labeler"], undoes=target["id"])])
        return target

    # --- what the labels say --------------------------------------------------------------------

    def done(self, labeler: str | None = None) -> set:
        """Keys (``pair_key``) of the pairs with a label or skip in force, by ``labeler`` if given."""
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
            chosen, rejected = (e["right"], e["left"]) if e["choice"] == "B" else (e["left"], e["right"])
            out.append(Comparison(e["prompt"], chosen, rejected, tie=e["choice"] == "tie",
                                  both_bad=e["choice"] == "both_bad", labeler=e["labeler"]))
        return out

    def counts(self, pairs=None) -> collections.Counter:
        """How many pairs (of ``pairs``, if given) each labeler's label in force covers."""
        keys = None if pairs is None else {pair_key(p) for p in pairs}
        return collections.Counter(e["labeler"] for e in self.current_labels()
                                   if keys is None or pair_key((e["prompt"], e["left"], e["right"])) in keys)

    def export_trl(self, path) -> int:
        """Write the comparisons in the TRL ``prompt``/``chosen``/``rejected`` format (``write_trl_jsonl``)."""
        return write_trl_jsonl(self.comparisons(), path)

    def __len__(self) -> int:
        return len(self.current_labels())

    def __repr__(self) -> str:
        return f"LabelStore({self.path!r}: {len(self.events)} events, {len(self)} pairs labeled)"


atexit.register(lambda: [store.close() for store in list(_WRITERS.values())])


def fill_unlabeled(store: LabelStore, pairs, labeler, seed: int = 0, verbose: bool = True) -> collections.Counter:
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
        rows.append(dict(prompt=pair[0], left=left, right=right, swapped=swapped, labeler=labeler.name,
                         choice=labeler.choose(pair[0], left, right), simulated=True,
                         criteria=labeler.criteria.name))
    store.label_many(rows)
    counts = store.counts(pairs)
    if verbose:
        who = ", ".join(f"{n} by {name}" for name, n in counts.most_common())
        print(f"{sum(counts.values())} of {len(pairs)} pairs labeled: {who} ({len(rows)} filled just now)")
    return counts


def left_choice_rate(labels) -> tuple[float, int, float]:
    """(rate, n, z): how often the answer shown on the *left* won, among the ``n`` decisive
    label events ("A" or "B"), and how many standard errors that is from 1/2.

    With the sides set by a fair coin, a labeler without position bias picks the left answer half
    the time up to noise (standard error 0.5 / sqrt(n)); |z| above ~3 is a bias you can trust."""
    decisive = [e["choice"] for e in labels if e["choice"] in ("A", "B")]
    n = len(decisive)
    if n == 0:
        return float("nan"), 0, float("nan")
    rate = decisive.count("A") / n
    return rate, n, (rate - 0.5) / (0.5 / math.sqrt(n))
