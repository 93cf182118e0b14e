"""The pairwise labeling widget: you are the labeler of stage 1.

It shows the labeling guidelines of the criteria you picked, the prompt, and two of the model's
completions side by side. Which completion goes left is a coin flip seeded by the pair
(``shown_sides``), so a habit of clicking "left" cannot favour either completion, and the store
records the sides so that the habit can be measured (``left_choice_rate``).

The first ``hand_pairs`` pairs (``HAND_PAIRS``, 40: the same for everyone who draws the pairs with
the same seed) are meant for you; the progress counts those. The rest, and any you skip, get
their labels from a stand-in labeler with your taste when a later stage reads the store
(``taste.training_labels``), so every label you give counts, also after "Run All". You may go
on past the first ``hand_pairs``: those labels count too.

Every answer is written to the ``LabelStore`` (flushed and fsynced) *before* the next pair
appears. Closing the tab or restarting the kernel loses nothing: a new widget on the same store
file starts at the first pair you have neither labeled nor skipped. Undo records an undo event
and brings the undone pair back.

It needs ``ipywidgets`` (``pip install "rlhf-lite[course]"``); the rest of the package does
not. Keys, while the mouse is over the widget (they need the ``ipyevents`` package; without it
the buttons work alone): ``<-`` or ``a`` A better, ``->`` or ``b`` B better, ``t`` tie, ``x``
both bad, ``s`` skip, ``u`` or Backspace undo. ipyevents listens for them only while the mouse
is over the widget, and then JupyterLab's own single-key shortcuts (``a``, ``b``, ``x``...) do
not reach the notebook; with the mouse elsewhere the keys are JupyterLab's, and the keys line
says so (a CSS rule on the class ipyevents sets while it listens, so it needs no kernel).

A clicked button is blurred once its answer is saved, so that its focus outline does not make the
next pair look pre-selected. Where widgets are not rendered (a saved notebook opened before its
cells run) the output reads ``FALLBACK_TEXT`` instead of the widgets' repr.
"""
from __future__ import annotations

import html

from .label_store import shown_sides
from .preferences import pair_key
from .world import get_criteria

try:   # the course extra; a headless install has neither, and only this widget needs them
    import ipywidgets as widgets
except ImportError:
    widgets = None
try:
    from ipyevents import Event
except ImportError:  # the buttons still work; only the keys need it
    Event = None

ACTIONS = {  # button description -> (the choice recorded, or skip/undo; its keys)
    "A better": ("A", ("ArrowLeft", "a")),
    "B better": ("B", ("ArrowRight", "b")),
    "Tie": ("tie", ("t",)),
    "Both bad": ("both_bad", ("x",)),
    "Skip": ("skip", ("s",)),
    "Undo": ("undo", ("u", "Backspace")),
}
KEY_LABELS = {"ArrowLeft": "\u2190", "ArrowRight": "\u2192", "Backspace": "Backspace"}
HAND_PAIRS = 40
"""How many of the first pairs are meant for labeling by hand (the progress bar counts these)."""
FALLBACK_TEXT = "Labeling widget: run this cell to label pairs"
"""What the widget's output reads where widgets are not rendered (its text/plain)."""

BOX_CLASS = "rlhf-labeling"
WATCHED_CLASS = "ipyevents-watched"  # ipyevents puts it on the box while it listens for keys
KEY_CAP = ("display:inline-block;min-width:1.1em;padding:0 5px;margin:0 1px;text-align:center;"
           "font:13px/1.5 var(--jp-code-font-family,monospace);"
           "color:var(--jp-ui-font-color0,#222);"
           "background:var(--jp-layout-color2,#f4f4f4);"
           "border:1px solid var(--jp-border-color1,#aaa);border-bottom-width:2px;"
           "border-radius:4px")
KEYS_STYLE = (  # shown or hidden by the browser as the mouse enters or leaves: no kernel involved
    f"<style>.{BOX_CLASS} .rlhf-keys-on {{display:none}}"
    f".{BOX_CLASS}.{WATCHED_CLASS} .rlhf-keys-on {{display:inline}}"
    f".{BOX_CLASS}.{WATCHED_CLASS} .rlhf-keys-off {{display:none}}</style>")


def _keys_text(keys) -> str:
    return " or ".join(KEY_LABELS.get(k, k) for k in keys)


def keys_line(live: bool) -> str:
    """The HTML line under the buttons: each key as a key cap (``<kbd>``), "or" between two keys
    of one action in plain small text, at 13 px. ``live``: the keys work (ipyevents is
    installed); then the line starts with whether they are listened to right now (the mouse over
    the widget) or not (the mouse elsewhere: the keys go to JupyterLab)."""
    def caps(keys):
        return " <span style='color:#777'>or</span> ".join(
            f"<kbd style='{KEY_CAP}'>{html.escape(KEY_LABELS.get(k, k))}</kbd>" for k in keys)
    shortcuts = " &nbsp;\u00b7&nbsp; ".join(
        f"<span style='white-space:nowrap'>{caps(keys)} {html.escape(name)}</span>"
        for name, (_, keys) in ACTIONS.items())
    if live:
        state = (KEYS_STYLE
                 + "<span class='rlhf-keys-on' style='color:#1a7f37'><b>Keys on</b> "
                   "(the mouse is over this box):</span>"
                 + "<span class='rlhf-keys-off' style='color:#9a5b00'><b>Keys off:</b> move the "
                   "mouse over this box to use them (elsewhere they are JupyterLab's keys).</span>")
    else:
        state = ("Keys need the <code>ipyevents</code> package (pip install ipyevents); "
                 "the buttons work without it.")
    return (f"<div style='font-size:13px;line-height:1.8;margin-top:4px'>{state}<br>"
            f"{shortcuts}</div>")


class LabelingWidget:
    """Label ``pairs`` (``(prompt, completion_1, completion_2)`` tuples, as ``sample_pairs``
    returns) into ``store`` as ``labeler`` ("you"), following ``criteria``'s guidelines; the
    first ``hand_pairs`` are meant for you (the progress counts them), the rest go on after them.

    Display the object in a notebook to show it. ``buttons`` maps each description ("A better",
    "B better", "Tie", "Both bad", "Skip", "Undo") to its ``ipywidgets.Button``; ``current`` is
    the pair on screen as (prompt, left, right, swapped), or None when every pair is done.
    """

    def __init__(self, store, pairs, criteria="helpful", seed: int = 0, labeler: str = "you",
                 hand_pairs: int = HAND_PAIRS):
        self.store, self.pairs, self.seed, self.labeler = store, list(pairs), seed, labeler
        self.hand_pairs = min(hand_pairs, len(self.pairs))
        self.criteria = get_criteria(criteria)
        if widgets is None:
            raise ImportError('the labeling widget needs ipywidgets, which comes with the course '
                              'extra: pip install "rlhf-lite[course]"')
        if not self.pairs:
            raise ValueError("no pairs to label: give a list of (prompt, completion_1, "
                             "completion_2) tuples, e.g. from sample_pairs or draw_pairs")
        store.lock()  # refuse now, not at the first click, when another process writes this file
        self.buttons = {}
        for name, (action, keys) in ACTIONS.items():
            button = widgets.Button(description=name, tooltip=f"key: {_keys_text(keys)}",
                                    button_style="info" if action in ("A", "B") else "",
                                    layout=widgets.Layout(width="110px"))
            button.on_click(lambda button, action=action: self._clicked(button, action))
            self.buttons[name] = button
        self._keys = {key: action for action, keys in ACTIONS.values() for key in keys}
        self._names = {action: name for name, (action, _) in ACTIONS.items()}
        self._header = widgets.HTML(
            f"<b>Which answer is better?</b> Criteria: <b>{html.escape(self.criteria.name)}</b>"
            "<div style='background:#f3f6fa;border-left:4px solid #4a7ab5;padding:4px 8px;"
            f"margin:4px 0'>{html.escape(self.criteria.guidelines)}</div>")
        self._progress_bar = widgets.IntProgress(min=0, max=self.hand_pairs,
                                                 layout=widgets.Layout(width="40%"))
        self._progress = widgets.HTML()
        self._prompt = widgets.HTML()
        panel = dict(border="1px solid #bbb", padding="6px 10px", width="50%", min_height="60px")
        self._left = widgets.HTML(layout=widgets.Layout(**panel))
        self._right = widgets.HTML(layout=widgets.Layout(**panel))
        self._status = widgets.HTML()
        self.box = widgets.VBox([
            self._header,
            widgets.HBox([self._progress_bar, self._progress]),
            self._prompt,
            widgets.HBox([self._left, self._right]),
            widgets.HBox(list(self.buttons.values())),
            widgets.HTML(keys_line(live=Event is not None)),
            self._status,
        ], layout=widgets.Layout(border="1px solid #ddd", padding="8px"))
        self.box.add_class(BOX_CLASS)
        if Event is not None:
            self._events = Event(source=self.box, watched_events=["keydown"],
                                 ignore_modifier_key_events=True)
            self._events.on_dom_event(self._on_key)
        self._show()

    def _repr_mimebundle_(self, **kwargs):
        return {**self.box._repr_mimebundle_(**kwargs), "text/plain": FALLBACK_TEXT}

    def __repr__(self) -> str:
        return FALLBACK_TEXT

    def _clicked(self, button, action: str) -> None:
        self.act(action)
        button.blur()  # else its focus outline stays on, and the next pair looks pre-selected

    @property
    def current(self):
        """(prompt, left, right, swapped) of the first pair you have neither labeled nor skipped."""
        done = self.store.done(self.labeler)
        pair = next((p for p in self.pairs if pair_key(p) not in done), None)
        return None if pair is None else (pair[0], *shown_sides(pair, self.seed))

    def act(self, action: str) -> None:
        """Answer the pair on screen with a choice ("A", "B", "tie", "both_bad"), "skip" or "undo".
        The store has it on disk before the widget moves on; if writing fails, it stays put."""
        current = self.current
        try:
            if action == "undo":
                undone = self.store.undo(self.labeler)
                message = (f"undid your {undone.get('choice', 'skip')} on "
                           f"\u201c{undone['prompt']}\u201d" if undone
                           else "nothing of yours to undo")
            elif current is None:
                message = "every pair is done; Undo brings back the last one"
            else:
                prompt, left, right, swapped = current
                if action == "skip":
                    event = self.store.skip(prompt, left, right, self.labeler, swapped=swapped)
                else:
                    event = self.store.label(prompt, left, right, action, self.labeler,
                                             swapped=swapped, criteria=self.criteria.name)
                message = f"saved #{event['id']}: {self._names[action]}"
        except Exception as error:  # a click handler's traceback would land in a hidden log
            self._status.value = (f"<span style='color:#b00'><b>Not saved:</b> "
                                  f"{html.escape(str(error))}</span>")
            return
        self._show(message)

    def _on_key(self, event: dict) -> None:
        if event.get("type") != "keydown" or event.get("repeat") or any(
                event.get(m) for m in ("ctrlKey", "metaKey", "altKey")):
            return
        key = event.get("key", "")
        action = self._keys.get(key if len(key) > 1 else key.lower())
        if action is not None:
            self.act(action)

    def _show(self, message: str = "") -> None:
        mine = self.store.done(self.labeler)
        hand = {pair_key(p) for p in self.pairs[:self.hand_pairs]}
        done = len(hand & mine)
        labeled = self.store.counts(self.pairs[:self.hand_pairs])[self.labeler]
        extra = self.store.counts(self.pairs[self.hand_pairs:])[self.labeler]
        rest = len({pair_key(p) for p in self.pairs}) - labeled - extra
        self._progress_bar.value = done
        lines = [f"<b>{done} / {len(hand)}</b> pairs for you done: {labeled} labeled by "
                 f"{html.escape(self.labeler)}, {done - labeled} skipped"
                 + (f"; and {extra} more after them" if extra else "")]
        if done == len(hand) and len(self.pairs) > len(hand):
            lines.append("Thank you! Going on is welcome: every label you give counts.")
        if rest:
            lines.append(f"The other {rest:,} pairs get their labels from a stand-in with your "
                         "taste when the next lesson reads them.")
        self._progress.value = "<br>".join("&nbsp;" + line for line in lines)
        current = self.current
        for button in self.buttons.values():
            button.disabled = current is None and button.description != "Undo"
        if current is None:
            self._prompt.value = ("<b>All pairs done.</b> Thank you! The next lessons train on "
                                  "your labels as they are when they start.")
            self._left.value = self._right.value = ""
        else:
            prompt, left, right, _ = current
            self._prompt.value = ("<div style='font-size:1.1em;margin:6px 0'><b>Prompt:</b> "
                                  f"{html.escape(prompt)}</div>")
            for panel, side, text in ((self._left, "A (left)", left),
                                      (self._right, "B (right)", right)):
                shown = html.escape(text) if text.strip() else "<i>(an empty answer)</i>"
                panel.value = f"<b>{side}</b><div style='margin-top:4px'>{shown}</div>"
        self._status.value = f"<small style='color:#555'>{html.escape(message)}</small>"
