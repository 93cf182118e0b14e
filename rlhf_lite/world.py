"""The world: a tiny internet with a known truth.

Real RLHF starts from a model trained on the internet, which sometimes answers rudely, wrongly
or not at all. We cannot download such a model here, so we generate a small world instead:

- a **task** makes prompts and an "internet" corpus of answers to them, written in a mix of
  styles (terse, full sentence, friendly, rambling, rude, wrong, evasive, off-topic);
- a **judge** reads *any* text in the world's vocabulary (also what a trained model writes)
  and returns its features: is it correct, rude, friendly, how long, does it repeat itself...;
- **criteria** weigh those features into a utility u(x, y): what the labelers are asked to
  prefer. Different criteria are different labeling instructions;
- **simulated labelers** compare two answers with Bradley-Terry noise::

      P(A preferred over B) = sigmoid((u(x, A) - u(x, B)) / temperature + position_bias)

  where ``position_bias`` > 0 favours whichever answer is shown on the left.

Because we know u exactly, every lesson can measure the truth ("gold"): the reward model never
sees it; evaluation always does.
"""
from __future__ import annotations

import dataclasses
import math
import random
import re

STYLES = ("terse", "sentence", "friendly", "rambling", "rude", "wrong", "evasive", "off_topic")
"""The answer styles of the corpus. The judge's ``style_of`` also returns "other" for texts
that fit none of them (a half-trained model writes some)."""

STYLE_MIX = {"terse": 0.14, "sentence": 0.18, "friendly": 0.14, "rambling": 0.10,
             "rude": 0.12, "wrong": 0.14, "evasive": 0.08, "off_topic": 0.10}
"""How often each style appears in the generated internet."""

RUDE_WORDS = {"ugh", "obviously", "stupid", "idiot", "dumb", "whatever", "boring"}
FRIENDLY_WORDS = {"great", "hope", "helps", "glad", "thanks", "sure"}
EVASIVE_PHRASES = ("I do not know.", "That is hard to say.", "Ask someone else.",
                   "I would rather not say.", "Who can say?")
OFF_TOPIC = ("I like turtles.", "The weather is nice today.", "My favourite food is bread.",
             "Let us talk about boats.", "Music is fun.")

NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]

TRIVIA_FAMILIES = {
    "capital": dict(
        facts=[("France", "Paris"), ("Spain", "Madrid"), ("Italy", "Rome"), ("Germany", "Berlin"),
               ("Japan", "Tokyo"), ("Egypt", "Cairo"), ("Peru", "Lima"), ("Kenya", "Nairobi"),
               ("Norway", "Oslo"), ("Greece", "Athens"), ("Canada", "Ottawa"),
               ("Chile", "Santiago")],
        questions=["What is the capital of {s}?", "Which city is the capital of {s}?",
                   "Name the capital of {s}.", "Tell me the capital of {s}."],
        sentence="The capital of {s} is {a}."),
    "sound": dict(
        facts=[("dog", "woof"), ("cat", "meow"), ("cow", "moo"), ("duck", "quack"),
               ("sheep", "baa"), ("owl", "hoot"), ("lion", "roar"), ("snake", "hiss")],
        questions=["What sound does a {s} make?", "What does a {s} say?",
                   "Which sound does a {s} make?"],
        sentence="A {s} says {a}."),
    "colour": dict(
        facts=[("sky", "blue"), ("grass", "green"), ("snow", "white"), ("banana", "yellow"),
               ("coal", "black"), ("blood", "red"), ("carrot", "orange"), ("plum", "purple")],
        questions=["What colour is the {s}?", "Which colour is the {s}?",
                   "Tell me the colour of the {s}."],
        sentence="The {s} is {a}."),
    "opposite": dict(
        facts=[("hot", "cold"), ("big", "small"), ("fast", "slow"), ("up", "down"),
               ("happy", "sad"), ("old", "young"), ("light", "dark"), ("early", "late"),
               ("full", "empty"), ("hard", "soft")],
        questions=["What is the opposite of {s}?", "Name the opposite of {s}.",
                   "Which word means the opposite of {s}?"],
        sentence="The opposite of {s} is {a}."),
    "sum": dict(
        facts=[(f"{NUMBERS[a]} plus {NUMBERS[b]}", NUMBERS[a + b])
               for a in range(1, 5) for b in range(1, 5)],
        questions=["What is {s}?", "How much is {s}?", "Tell me what {s} is."],
        sentence="{S} is {a}."),
}

SUMMARY_NAMES = ["Anna", "Ben", "Clara", "David", "Eva", "Felix", "Greta", "Hugo"]
SUMMARY_EVENTS = [("won the race", "race"), ("found a cat", "cat"), ("lost the key", "key"),
                  ("baked a cake", "cake"), ("painted the door", "door"), ("sold the boat", "boat")]
SUMMARY_DETAILS = [("lives in {x}.", ["Rome", "Oslo", "Lima", "Cairo"]),
                   ("likes {x}.", ["tea", "soup", "rice", "jazz"]),
                   ("has a {x} bike.", ["red", "blue", "green", "black"]),
                   ("works as a {x}.", ["cook", "nurse", "pilot", "farmer"])]


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


@dataclasses.dataclass(frozen=True)
class Truth:
    """What the judge knows about one prompt."""
    subject_words: frozenset   # words of the question's subject (never count as an answer)
    key_words: frozenset       # the right answer (trivia) or the key fact's word (summaries)
    known_words: frozenset     # words that state a true fact about this prompt
    fact_words: frozenset      # every word that can state a fact in this task (for "wrong")
    sentence: str              # a correct full-sentence answer
    fact: str = ""             # the fact asked, "family:subject": phrasings of it share it


class Task:
    """A task: prompts, an internet corpus of answers in many styles, and the truth."""
    name: str
    max_new_tokens: int

    def __init__(self, seed: int = 0):
        self.seed = seed
        self.truth: dict[str, Truth] = {}
        self.answer_pool: dict[str, list[str]] = {}  # prompt -> wrong answers one can invent
        self._build(random.Random(seed))
        self.prompts = sorted(self.truth)
        random.Random(seed + 1).shuffle(self.prompts)

    def _build(self, rng):
        raise NotImplementedError

    def answer(self, prompt: str, style: str, rng: random.Random) -> str:
        """One internet answer to ``prompt`` written in ``style``."""
        if style not in STYLES:
            raise ValueError(f"unknown style {style!r}; valid styles: {', '.join(STYLES)}")
        truth = self.truth[prompt]
        sentence = truth.sentence
        key = self._key_phrase(prompt)
        wrong = self._wrong_sentence(prompt, rng)
        return rng.choice({
            "terse": [key],
            "sentence": [sentence],
            "friendly": [f"Great question! {sentence} Hope this helps!",
                         f"Glad to help! {sentence}",
                         f"Sure! {sentence} Thanks for asking!"],
            "rambling": [f"Well, let me think. {sentence} Many people ask this. {sentence}",
                         f"So, I hear this a lot. {sentence} I think so anyway."],
            "rude": [f"Ugh, {key[0].lower() + key[1:]} Obviously.",
                     f"{sentence} Stop asking stupid questions.",
                     f"Whatever. {sentence}"],
            "wrong": [wrong],
            "evasive": list(EVASIVE_PHRASES),
            "off_topic": list(OFF_TOPIC),
        }[style])

    def corpus(self, n: int = 20_000, seed: int | None = None) -> list[tuple[str, str, str]]:
        """``n`` (prompt, answer, style) triples: the internet the base model learns from."""
        rng = random.Random(self.seed if seed is None else seed)
        styles, weights = zip(*STYLE_MIX.items())
        rows = []
        for _ in range(n):
            prompt = rng.choice(self.prompts)
            style = rng.choices(styles, weights)[0]
            rows.append((prompt, self.answer(prompt, style, rng), style))
        return rows

    def vocabulary(self) -> set[str]:
        """Every word and punctuation token the world can write."""
        texts = list(self.prompts)
        rng = random.Random(0)
        for prompt in self.prompts:
            for style in STYLES:
                texts += [self.answer(prompt, style, rng) for _ in range(30)]
        tokens = {tok for text in texts for tok in re.findall(r"\w+|[^\w\s]", text)}
        return tokens | {t.lower() for t in tokens} | {t[0].upper() + t[1:] for t in tokens}


class Trivia(Task):
    """Short factual questions ("What is the capital of France?") in several phrasings."""
    name = "trivia"
    max_new_tokens = 24

    def _build(self, rng):
        self._wrong: dict[str, list[tuple[str, str]]] = {}
        fact_words = {w for fam in TRIVIA_FAMILIES.values()
                      for _, a in fam["facts"] for w in _words(a)}
        for family_name, family in TRIVIA_FAMILIES.items():
            for subject, answer in family["facts"]:
                sentence = family["sentence"].format(s=subject, a=answer,
                                                     S=subject[0].upper() + subject[1:])
                others = [a for _, a in family["facts"]
                          if a != answer and not set(_words(a)) & set(_words(subject))]
                for question in family["questions"]:
                    prompt = "Question: " + question.format(s=subject) + " Answer:"
                    self.truth[prompt] = Truth(frozenset(_words(subject)),
                                               frozenset(_words(answer)),
                                               frozenset(_words(answer)), frozenset(fact_words),
                                               sentence, fact=f"{family_name}:{subject}")
                    self._wrong[prompt] = [
                        (family["sentence"].format(s=subject, a=o,
                                                   S=subject[0].upper() + subject[1:]), o)
                        for o in others]

    def _key_phrase(self, prompt):
        answer = next(iter(self.truth[prompt].key_words))
        return answer[0].upper() + answer[1:] + "."

    def _wrong_sentence(self, prompt, rng):
        sentence, other = rng.choice(self._wrong[prompt])
        return rng.choice([sentence, other[0].upper() + other[1:] + "."])


class Summaries(Task):
    """Summarise a made-up news item: keep the key fact (the first sentence), stay short."""
    name = "summaries"
    max_new_tokens = 32

    def _build(self, rng):
        fact_words = ({w for _, w in SUMMARY_EVENTS}
                      | {x.lower() for _, xs in SUMMARY_DETAILS for x in xs})
        self._docs = {}
        for name in SUMMARY_NAMES:
            for event, event_word in SUMMARY_EVENTS:
                details = rng.sample(SUMMARY_DETAILS, rng.randint(1, 3))
                detail_sents = [f"{name} {template.format(x=rng.choice(xs))}"
                                for template, xs in details]
                key = f"{name} {event}."
                prompt = "Summarize: " + " ".join([key] + detail_sents) + " Summary:"
                known = {event_word} | {w for s in detail_sents for w in _words(s)} & fact_words
                self.truth[prompt] = Truth(frozenset({name.lower()}), frozenset({event_word}),
                                           frozenset(known), frozenset(fact_words), key,
                                           fact=f"{event_word}:{name}")
                self._docs[prompt] = (key, detail_sents)

    def _key_phrase(self, prompt):
        event = self._docs[prompt][0].split(" ", 1)[1]
        return event[0].upper() + event[1:]

    def _wrong_sentence(self, prompt, rng):
        key, details = self._docs[prompt]
        truth = self.truth[prompt]
        name = key.split()[0]
        invented = rng.choice(sorted(truth.fact_words - truth.known_words
                                     - {w for _, w in SUMMARY_EVENTS}))
        template = next(t for t, xs in SUMMARY_DETAILS if invented in [x.lower() for x in xs])
        word = next(x for t, xs in SUMMARY_DETAILS for x in xs if x.lower() == invented)
        return rng.choice([f"{key} {name} {template.format(x=word)}",    # invents a fact
                           details[0]])                                 # drops the point

    def answer(self, prompt, style, rng):
        if style == "rambling":
            key, details = self._docs[prompt]
            return " ".join(["Well, so.", key] + details + ["That is the story.", key])
        return super().answer(prompt, style, rng)


TASKS = {"trivia": Trivia, "summaries": Summaries}


def make_task(name: str = "trivia", seed: int = 0) -> Task:
    """The task called ``name`` (see ``TASKS``), generated from ``seed``."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}")
    return TASKS[name](seed)


# ---------------------------------------------------------------------------------------------
# The judge: features of any text, and a style read off those features.
# ---------------------------------------------------------------------------------------------

FEATURES = ("correct", "wrong", "rude", "friendly", "evasive", "on_topic", "complete_sentence",
            "length", "repetition")


def judge(task: Task, prompt: str, text: str) -> dict[str, float]:
    """The features of ``text`` as an answer to ``prompt``.

    correct: states the right answer / keeps the key fact.  wrong: states a false fact (another
    answer, an invented detail).  rude, friendly: counts of marker words.  evasive: dodges.
    on_topic: mentions the subject or the facts.  complete_sentence: the subject and an answer
    in one text.  length: words.  repetition: share of repeated word pairs (0 = none).
    """
    if prompt not in task.truth:
        raise KeyError(f"the judge does not know this prompt: {prompt!r} "
                       f"(it is not a {task.name} prompt)")
    truth = task.truth[prompt]
    words = _words(text)
    content = set(words) - truth.subject_words
    stated = content & truth.fact_words
    pairs = list(zip(words, words[1:]))
    evasive = any(p.lower() in text.lower() for p in EVASIVE_PHRASES)
    return {
        "correct": float(bool(truth.key_words & content)),
        "wrong": float(bool(stated - truth.known_words)),
        "rude": float(sum(w in RUDE_WORDS for w in words)),
        "friendly": float(sum(w in FRIENDLY_WORDS for w in words)),
        "evasive": float(evasive),
        "on_topic": float(bool(set(words) & (truth.subject_words | truth.fact_words))),
        "complete_sentence": float(bool(set(words) & truth.subject_words) and bool(stated)),
        "length": float(len(words)),
        "repetition": 1.0 - len(set(pairs)) / len(pairs) if pairs else 0.0,
    }


def style_of(task: Task, prompt: str, text: str) -> str:
    """The style a text is written in, read off the judge's features (or "other")."""
    f = judge(task, prompt, text)
    if f["rude"]:
        return "rude"
    if f["evasive"]:
        return "evasive"
    if not f["on_topic"]:
        return "off_topic" if f["length"] else "other"
    if f["wrong"]:
        return "wrong"
    if not f["correct"]:  # a summary missing the point is wrong; a trivia answer missing it is odd
        return "wrong" if task.name == "summaries" else "other"
    if f["repetition"] > 0 or f["length"] > 12:
        return "rambling"
    if f["friendly"]:
        return "friendly"
    if f["complete_sentence"] and f["length"] > 2:
        return "sentence"
    return "terse"


# ---------------------------------------------------------------------------------------------
# Criteria: what the labelers are asked to prefer.  u(x, y) = sum_k w_k f_k(x, y) - length cost
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Criteria:
    """Alignment criteria: weights on the judge's features, and a cost per word past a target.

    u(x, y) = sum_k weights[k] * f_k(x, y) - length_cost * max(0, length - target_length)

    ``friendly`` and ``rude`` counts are capped at 2, so piling up nice words stops paying.
    ``guidelines`` is what a human labeler would be told.
    """
    name: str
    weights: dict
    target_length: int
    length_cost: float
    guidelines: str

    def utility(self, features: dict) -> float:
        f = dict(features, friendly=min(features["friendly"], 2.0), rude=min(features["rude"], 2.0))
        u = sum(w * f[k] for k, w in self.weights.items())
        return u - self.length_cost * max(0.0, f["length"] - self.target_length)


CRITERIA = {
    "helpful": Criteria(
        "helpful",
        dict(correct=3.0, wrong=-3.0, rude=-3.0, friendly=0.3, evasive=-2.0, on_topic=1.0,
             complete_sentence=1.0, repetition=-3.0),
        target_length=10, length_cost=0.15,
        guidelines="Prefer the answer that is correct and complete, stated as a clear sentence. "
                   "Penalise false facts, rudeness, dodging the question and rambling."),
    "concise": Criteria(
        "concise",
        dict(correct=3.0, wrong=-3.0, rude=-1.0, friendly=-0.5, evasive=-2.0, on_topic=1.0,
             complete_sentence=0.0, repetition=-3.0),
        target_length=2, length_cost=0.4,
        guidelines="Prefer the shortest correct answer. Every extra word counts against it; "
                   "false facts and dodging are worst."),
    "friendly": Criteria(
        "friendly",
        dict(correct=1.5, wrong=-1.5, rude=-4.0, friendly=1.5, evasive=-1.0, on_topic=1.0,
             complete_sentence=0.5, repetition=-2.0),
        target_length=16, length_cost=0.05,
        guidelines="Prefer the warm, polite answer. Rudeness is the worst sin; being right "
                   "matters, but less than tone."),
}


def get_criteria(criteria: "str | Criteria") -> Criteria:
    """A preset by name (see ``CRITERIA``), or the ``Criteria`` object itself."""
    if isinstance(criteria, Criteria):
        return criteria
    if criteria not in CRITERIA:
        raise ValueError(f"unknown criteria {criteria!r}; valid presets: {', '.join(CRITERIA)}")
    return CRITERIA[criteria]


# ---------------------------------------------------------------------------------------------
# The world: a task, its judge and criteria in one object.
# ---------------------------------------------------------------------------------------------

class World:
    """A task plus the judge: the object every lesson starts from.

    >>> world = World("trivia", seed=0)
    >>> world.gold(world.prompts[0], "Paris.", "helpful")
    """

    def __init__(self, task: str = "trivia", seed: int = 0):
        self.task = make_task(task, seed)
        self.seed = seed

    @property
    def prompts(self) -> list[str]:
        return self.task.prompts

    @property
    def max_new_tokens(self) -> int:
        return self.task.max_new_tokens

    def corpus(self, n: int = 20_000, seed: int | None = None):
        return self.task.corpus(n, seed)

    def features(self, prompt: str, text: str) -> dict[str, float]:
        return judge(self.task, prompt, text)

    def style(self, prompt: str, text: str) -> str:
        return style_of(self.task, prompt, text)

    def gold(self, prompt: str, text: str, criteria: "str | Criteria" = "helpful") -> float:
        """The noiseless utility u(x, y) under ``criteria``: the truth we measure against."""
        return get_criteria(criteria).utility(self.features(prompt, text))

    def gold_many(self, prompts, texts, criteria="helpful") -> list[float]:
        return [self.gold(p, t, criteria) for p, t in zip(prompts, texts)]

    def fact(self, prompt: str) -> str:
        """The fact ``prompt`` asks, e.g. "capital:France": its phrasings share it."""
        return self.task.truth[prompt].fact

    def split_prompts(self, heldout: float = 0.2) -> tuple[list[str], list[str]]:
        """(train, heldout) prompts that ask *different facts*: every phrasing of a held-out fact
        is held out, so no held-out prompt asks what a training prompt asks in other words.

        About ``heldout`` of each family's facts (capitals, sounds, ...; at least one where a
        family has two or more) are held out, the first in the world's shuffled prompt order, so
        the split is fixed for a world and every lesson evaluates on the same unseen facts.
        """
        if not 0.0 <= heldout < 1.0:
            raise ValueError(f"heldout is the share of facts held out, in [0, 1); got {heldout}")
        families = {}                          # family -> its facts, in the shuffled prompt order
        for prompt in self.prompts:
            fact = self.fact(prompt)
            families.setdefault(fact.split(":")[0], {})[fact] = None
        held_facts = set()
        for facts in families.values():
            n = round(len(facts) * heldout)
            n = max(n, 1) if heldout > 0 and len(facts) > 1 else n
            held_facts |= set(list(facts)[:n])
        train = [p for p in self.prompts if self.fact(p) not in held_facts]
        return train, [p for p in self.prompts if self.fact(p) in held_facts]


# ---------------------------------------------------------------------------------------------
# Simulated labelers: Bradley-Terry choices under their own criteria.
# ---------------------------------------------------------------------------------------------

EULER_GAMMA = 0.5772156649015329   # the mean of a standard Gumbel draw


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


@dataclasses.dataclass
class SimulatedLabeler:
    """A labeler who prefers by ``criteria``, noisily.

    P(left preferred) = sigmoid((u(x, left) - u(x, right)) / temperature + position_bias)

    temperature: noise; 0.5 is careful, 1 typical, 3 nearly random.
    position_bias: extra log-odds for the answer shown on the left (0 = none; 0.5 is strong).
    """
    world: World
    criteria: "str | Criteria" = "helpful"
    temperature: float = 1.0
    position_bias: float = 0.0
    seed: int = 0
    name: str = ""

    def __post_init__(self):
        self.criteria = get_criteria(self.criteria)
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        self.name = self.name or f"sim-{self.criteria.name}"
        self._rng = random.Random(self.seed)

    def prob_left(self, prompt: str, left: str, right: str) -> float:
        """P(the left answer is preferred), as defined above."""
        u = (self.world.gold(prompt, left, self.criteria)
             - self.world.gold(prompt, right, self.criteria))
        return sigmoid(u / self.temperature + self.position_bias)

    def choose(self, prompt: str, left: str, right: str) -> str:
        """"A" (left preferred) or "B" (right preferred), sampled."""
        return "A" if self._rng.random() < self.prob_left(prompt, left, right) else "B"

    def score(self, prompt: str, text: str, scale: float = 1.0, offset: float = 0.0) -> float:
        """The *score* (unrounded) a rater with their own ``scale`` a and ``offset`` c gives one
        answer on its own, what asking for scores instead of comparisons gets you (lesson 1)::

            score = a * (u(x, y) + eps) + c,    eps ~ Gumbel(0, temperature), less its mean

        Gumbel noise because the difference of two such draws is logistic: the order of two
        scores, with a > 0, is then exactly a Bradley-Terry choice at this ``temperature``
        (McFadden 1974), so scores and comparisons carry the same noise and differ only in
        what the scale adds (rounding, offsets, drift; ``preferences.score_session``)."""
        u = self.world.gold(prompt, text, self.criteria)
        gumbel = -math.log(-math.log(self._rng.random() or 1e-300)) - EULER_GAMMA
        return scale * (u + self.temperature * gumbel) + offset
