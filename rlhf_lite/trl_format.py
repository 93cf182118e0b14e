"""TRL's preference layouts, in and out: the files that TRL's trainers and ``datasets`` read.

TRL documents four layouts of preference rows (huggingface.co/docs/trl/dataset_formats)::

    standard, explicit prompt        {"prompt": "The sky is", "chosen": " blue.",
                                      "rejected": " green."}
    standard, implicit prompt        {"chosen": "The sky is blue.", "rejected": "The sky is green."}
    conversational, explicit prompt  {"prompt": [{"role": "user", "content": "The sky's colour?"}],
                                      "chosen": [{"role": "assistant", "content": "Blue."}],
                                      "rejected": [{"role": "assistant", "content": "Green."}]}
    conversational, implicit prompt  {"chosen": [<the user's message>, <the chosen answer>],
                                      "rejected": [<the user's message>, <the rejected answer>]}

Reading (``read_trl_jsonl`` for a file, ``from_trl`` for rows) takes all four and refuses
anything else when it reads, naming the file and line (or the row): a null or a number where
text belongs, mixed layouts, a message without a text ``role`` and ``content``, TRL's unpaired
layout (``completion`` + ``label``), rows that are not objects, bytes that are not UTF-8.

- Implicit prompt: the prompt is what chosen and rejected share at the start, as TRL's
  ``extract_prompt`` takes it (text up to the first difference, less a space just before it;
  messages up to the first message that differs). Two answers that start with the same words
  lend those words to the prompt: prefer the explicit layout when you have the choice.
- Conversational: rendered to text with the chat template of ``tokenizer`` when it has one (the
  prompt with ``add_generation_prompt=True``; each answer is what the template adds after it).
  Otherwise the plain rendering: each side is its messages' contents joined by newlines, the
  roles dropped (a one-message prompt is that message's text).
- The space between prompt and answer: TRL joins them with nothing between, and TRL's own
  preference data start each answer with a space (" blue."). The package tokenises prompt and
  " " + answer (``models.encode_completions``). So the export writes " " + answer and the import
  removes one leading space: with a BPE tokenizer, TRL and the package then see the same tokens.

Writing (``write_trl_jsonl``, ``to_trl``): layout "standard" (the default) or "conversational",
both with an explicit prompt, as TRL recommends. Ties and both-bad judgements carry no
preference: they are left out, with a warning that counts them. ``ties=True``/``both_bad=True``
keep them, with a ``tie``/``both_bad`` column set to true; TRL's trainers ignore those columns
and would train on such rows as preferences, so filter them out before handing the file to TRL.
"""
from __future__ import annotations

import json
import logging
import os
import re

from .label_file import _fsync_folder

logger = logging.getLogger(__name__)
LAYOUTS = ("standard", "conversational")


def to_trl(comparisons, ties: bool = False, both_bad: bool = False,
           layout: str = "standard") -> list[dict]:
    """TRL preference rows of ``comparisons`` (for ``datasets.Dataset.from_list``); see the
    module docstring for ``ties``, ``both_bad`` and ``layout``."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r} is none of {', '.join(LAYOUTS)}")
    rows, left_out = [], {"tie": 0, "both_bad": 0}
    for c in comparisons:
        if (c.tie and not ties) or (c.both_bad and not both_bad):
            left_out["tie" if c.tie else "both_bad"] += 1
            continue
        if layout == "standard":
            row = dict(prompt=c.prompt, chosen=" " + c.chosen, rejected=" " + c.rejected)
        else:
            row = dict(prompt=[dict(role="user", content=c.prompt)],
                       chosen=[dict(role="assistant", content=c.chosen)],
                       rejected=[dict(role="assistant", content=c.rejected)])
        if ties:
            row["tie"] = c.tie
        if both_bad:
            row["both_bad"] = c.both_bad
        rows.append(row)
    if any(left_out.values()):
        logger.warning("the TRL export leaves out %d tie(s) and %d both-bad judgement(s) of %d: "
                       "they carry no preference. Pass ties=True / both_bad=True to keep them, "
                       "marked in a 'tie' / 'both_bad' column", left_out["tie"],
                       left_out["both_bad"], len(rows) + sum(left_out.values()))
    return rows


def write_trl_jsonl(comparisons, path, ties: bool = False, both_bad: bool = False,
                    layout: str = "standard") -> int:
    """Write ``to_trl(comparisons, ties, both_bad, layout)`` as JSON Lines (what
    ``datasets.load_dataset("json", ...)`` and TRL read); returns the number of rows. Written to
    a temporary file, fsynced, then renamed, so a reader never sees half an export, even after a
    crash. Refuses to overwrite a file of label events (a ``LabelStore``'s)."""
    rows = to_trl(comparisons, ties, both_bad, layout)
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            if re.match(rb'\{"id": \d+, "event": "(label|skip|undo)"', f.read(200)):
                raise ValueError(f"{path} holds label events (a LabelStore's file): the export "
                                 "would overwrite those labels. Export to another file")
    except FileNotFoundError:
        pass
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with open(f"{path}.tmp", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        f.flush()
        os.fsync(f.fileno())
    os.replace(f"{path}.tmp", path)
    _fsync_folder(folder)                 # make the rename itself durable
    return len(rows)


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------

def _kind(value, key: str) -> str:
    """'text' or 'messages', or a ValueError saying what ``value`` is instead."""
    if isinstance(value, str):
        return "text"
    if isinstance(value, list) and value and all(
            isinstance(m, dict) and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str) for m in value):
        return "messages"
    if isinstance(value, list):
        raise ValueError(f"{key} is a list but not of messages with a text 'role' and 'content' "
                         f"(got {json.dumps(value)[:80]})")
    raise ValueError(f"{key} must be text or a list of messages, got "
                     f"{'null' if value is None else json.dumps(value)[:80]}")


def _shared_start(chosen, rejected):
    """TRL's ``extract_prompt``: (prompt, chosen, rejected) split where the two first differ."""
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    if isinstance(chosen, str) and 0 < n < len(chosen) and chosen[n - 1] == " ":
        n -= 1   # the space before the answers goes with the answers
    return chosen[:n], chosen[n:], rejected[n:]


def _render(prompt, chosen, rejected, tokenizer):
    """Conversational sides as text: the chat template when there is one, else the plain one."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        return tuple("\n".join(m["content"] for m in side) for side in (prompt, chosen, rejected))
    head = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    answers = []
    for side in (chosen, rejected):
        whole = tokenizer.apply_chat_template(prompt + side, tokenize=False)
        if not whole.startswith(head):
            raise ValueError("the tokenizer's chat template renders the prompt differently once "
                             "an answer follows it, so the answer cannot be cut out; pass "
                             "tokenizer=None for the plain rendering")
        answers.append(whole[len(head):])
    return head, *answers


def _comparison(row, labeler: str, tokenizer):
    from .preferences import Comparison   # here: preferences imports this module
    if not isinstance(row, dict):
        raise ValueError(f"a preference row is a JSON object, got {type(row).__name__}")
    if "event" in row and "left" in row:
        raise ValueError("this is a LabelStore file (label events), not TRL rows: read it with "
                         "LabelStore(path).comparisons()")
    if "chosen" not in row and "completion" in row and "label" in row:
        raise ValueError("an unpaired preference row (prompt, completion, label: TRL's layout for "
                         "KTO); rlhf-lite learns from pairs of chosen and rejected answers")
    missing = [k for k in ("chosen", "rejected") if k not in row]
    if missing:
        raise ValueError(f"lacks {', '.join(missing)}; TRL preference rows have 'chosen' and "
                         "'rejected', and 'prompt' unless it is implicit")
    sides = {k: row[k] for k in ("prompt", "chosen", "rejected") if k in row}
    kinds = {k: _kind(v, k) for k, v in sides.items()}
    if len(set(kinds.values())) > 1:
        raise ValueError("mixes layouts: " + ", ".join(f"{k} is {v}" for k, v in kinds.items())
                         + "; a row is all text (standard) or all messages (conversational)")
    flags = {k: row.get(k) for k in ("tie", "both_bad")}
    for key, value in flags.items():
        if value is not None and not isinstance(value, bool):
            raise ValueError(f"{key} must be true or false, got {json.dumps(value)[:40]}")
    prompt, chosen, rejected = (_shared_start(row["chosen"], row["rejected"]) if "prompt" not in row
                                else (row["prompt"], row["chosen"], row["rejected"]))
    if not prompt:
        raise ValueError("chosen and rejected share no start, so the implicit prompt is empty; "
                         "give a 'prompt' column")
    if kinds["chosen"] == "messages":
        prompt, chosen, rejected = _render(prompt, chosen, rejected, tokenizer)
    else:   # TRL's own data start answers with a space; the package puts it back (see above)
        chosen, rejected = (s[1:] if s.startswith(" ") else s for s in (chosen, rejected))
    return Comparison(prompt, chosen, rejected, tie=bool(flags["tie"]),
                      both_bad=bool(flags["both_bad"]), labeler=labeler)


def from_trl(rows, labeler: str = "imported", tokenizer=None) -> list:
    """``Comparison``s from TRL preference rows in any of the four layouts (a list of dicts or a
    ``datasets.Dataset``); ``tokenizer``: its chat template renders conversational rows. A row
    that is none of them raises ``ValueError`` naming it (row 0 is the first)."""
    out = []
    for i, row in enumerate(rows):
        try:
            out.append(_comparison(row, labeler, tokenizer))
        except ValueError as e:
            raise ValueError(f"row {i}: {e}") from None
    return out


def read_trl_jsonl(path, labeler: str = "imported", tokenizer=None) -> list:
    """``Comparison``s from a TRL preference file (JSON Lines, any of the four layouts; see
    ``from_trl``). A line that is not a preference row raises ``ValueError`` naming file:line."""
    path, out = os.fspath(path), []
    with open(path, "rb") as f:
        data = f.read()
    for lineno, raw in enumerate(data.split(b"\n"), 1):
        if not raw.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            row = json.loads(raw.decode("utf-8"))
            out.append(_comparison(row, labeler, tokenizer))
        except UnicodeDecodeError as e:
            raise ValueError(f"{where}: not UTF-8 text (byte {raw[e.start]:#04x} at column "
                             f"{e.start + 1}); save the file as UTF-8") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not valid JSON ({e.msg}, column {e.colno})") from None
        except RecursionError:
            raise ValueError(f"{where}: nested too deeply to be a preference row") from None
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
    return out
