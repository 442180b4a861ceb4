"""What the model sees of one exchange: a flat, JSON-serialisable river feature dict.

``features()`` is pure and cheap (it runs on every chat request), and its cost stops
growing with the reply: of a long reply it reads a bounded part (``read``: the first
``READ_HEAD_CHARS`` and the last ``READ_TAIL_CHARS`` characters, cut between words),
tokenised once and shared with the model's text transform. The texts stay as
strings under ``"reply"`` and ``"question"``; the model's pipeline turns them into
word features, so the vocabulary is the model's business. The store keeps the dict
``without_text``: the texts are in the exchange's own columns, once.
Every numeric key in ``NUMERIC_KEYS`` is always present (0.0 plus a ``has_*`` flag when
a signal is missing), so the model and the anomaly detector (``REPLY_KEYS``) see a
fixed-width vector. The conversation's features come from ``conversation``.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from middleware.scoring.conversation import (
    CONVERSATION_KEYS,
    Sibling,
    Thumbs,
    conversation_features,
)

__all__ = [
    "FEATURES_VERSION",
    "NUMERIC_KEYS",
    "QUESTION_CHARS",
    "READ_HEAD_CHARS",
    "READ_TAIL_CHARS",
    "REPLY_KEYS",
    "TEXT_KEYS",
    "ExchangeView",
    "Reading",
    "features",
    "read",
    "sibling_of",
    "without_text",
    "word_spans",
    "words",
]

#: What ``features()`` yields: 2 added the conversation's (``conversation.CONVERSATION_KEYS``);
#: a model learned on an older version lacks their weights.
FEATURES_VERSION = 2

#: The features that are raw text: stored once, in the exchange's own columns, never
#: again inside ``features_json`` (the learner puts them back from those columns).
TEXT_KEYS = ("reply", "question")
#: How much of the question the features read, and the ``question`` column keeps: the
#: whole request is already in ``request_json``.
QUESTION_CHARS = 4000
#: How much of a long text (a reply, an earlier bot turn) features and the model read:
#: the first and the last this many characters (about 130 and 65 words of prose), each
#: cut at whitespace so no word is split. The length features still count the whole.
READ_HEAD_CHARS = 800
READ_TAIL_CHARS = 400


@dataclass(frozen=True, slots=True)
class ExchangeView:
    question: str  # last user turn, "" if none
    reply: str
    history: tuple[tuple[str, str], ...] = ()  # (role, text), up to 4 earlier turns
    finish_reason: str | None = None
    tool_calls: int = 0
    logprob_mean: float | None = None
    retrieval_score: float | None = None  # local adapter's TF-IDF similarity
    route: str = "chat"
    model: str = ""
    user_helpful_rate: float | None = None  # this end user's running helpful rate
    user_votes: int = 0
    thumbs: Thumbs | None = None  # this end user's last thumb and fast-moving average
    sibling: Sibling | None = None  # an earlier reply to the same conversation


#: The reply's own numeric signals: what the outlier detector reads (the conversation
#: around a reply, a user's bad mood say, does not make the reply unlike others).
REPLY_KEYS: tuple[str, ...] = (
    "reply_words",
    "reply_chars",
    "question_words",
    "hedges",
    "refusals",
    "apologies",
    "echo",
    "self_repeat",
    "reply_is_question",
    "word_variety",
    "non_alpha",
    "tool_calls",
    "finish_length",
    "logprob_mean",
    "has_logprob",
    "retrieval_score",
    "has_retrieval",
    "user_rate",
    "user_logit",
    "user_votes",
    "user_known",
)
#: Every numeric feature: what the model reads.
NUMERIC_KEYS: tuple[str, ...] = (*REPLY_KEYS, *CONVERSATION_KEYS)

# Matched on whole words of the lower-cased reply with curly apostrophes made straight.
_HEDGES = (
    "i'm not sure",
    "im not sure",
    "i am not sure",
    "not sure",
    "i think",
    "i guess",
    "i believe",
    "maybe",
    "perhaps",
    "possibly",
    "probably",
    "might be",
    "could be",
    "i don't know",
    "i dont know",
    "i do not know",
    "no idea",
    "hard to say",
    "it depends",
)
_REFUSALS = (
    "i can't",
    "i cant",
    "i cannot",
    "i can not",
    "i'm unable",
    "i am unable",
    "i'm not able",
    "i am not able",
    "i won't",
    "as an ai",
    "language model",
    "i'm not allowed",
    "not appropriate",
)
_APOLOGIES = ("sorry", "i apologize", "i apologise", "my apologies")


def _phrase_pattern(phrases: tuple[str, ...]) -> re.Pattern[str]:
    # No lookbehind for the start of a word: ``_count`` checks it, so the regex engine
    # can skip ahead on the phrases' first letters (twice as fast as a lookbehind).
    alternatives = sorted((re.escape(p) for p in phrases), key=len, reverse=True)
    return re.compile(r"(?:" + "|".join(alternatives) + r")(?![\w'])")


_WORDISH_RE = re.compile(r"[\w']")


def _count(pattern: re.Pattern[str], text: str) -> int:
    r"""How many times ``pattern``'s phrases occur in ``text`` as whole words, leftmost
    first, without overlap: ``findall`` of the pattern behind ``(?<![\w'])``."""
    n = pos = 0
    while (m := pattern.search(text, pos)) is not None:
        start = m.start()
        if start and _WORDISH_RE.match(text, start - 1):
            pos = start + 1  # inside a word: look again from the next character
            continue
        n += 1
        pos = m.end()
    return n


class _Phrases:
    """Counts whole-word occurrences of phrases (``_count``). Most replies hold none of
    them, which substring tests tell three times faster than the regex's scan."""

    def __init__(self, phrases: tuple[str, ...]) -> None:
        self.phrases = phrases
        self.pattern = _phrase_pattern(phrases)

    def count(self, text: str) -> float:
        if not any(phrase in text for phrase in self.phrases):
            return 0.0
        return float(_count(self.pattern, text))


_HEDGE = _Phrases(_HEDGES)
_REFUSAL = _Phrases(_REFUSALS)
_APOLOGY = _Phrases(_APOLOGIES)
_WORD_RE = re.compile(r"[^\W_]+(?:'[^\W_]+)?")
_BOT_ROLES = frozenset({"assistant", "bot"})
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "`": "'"})
# ASCII text keeps its letters only: str.translate's fast path, ten times sum(isalpha)
_ONLY_ALPHA = str.maketrans("", "", "".join(c for c in map(chr, range(128)) if not c.isalpha()))


def _alpha(text: str) -> int:
    return sum(map(str.isalpha, text))


# A user's rate is shrunk toward a neutral 0.5 by this many pseudo-votes, so one early
# thumb does not read as a verdict on the user.
_RATE_PSEUDO_VOTES = 2.0


def _fold(text: str) -> str:
    """Lower-cased, curly apostrophes and backticks made straight."""
    if not text.isascii():
        text = text.translate(_APOSTROPHES)
    return text.replace("`", "'").lower()


def word_spans(text: str) -> list[tuple[int, int]] | None:
    """Where each of ``words(text)`` lies in ``text`` itself (None when lower-casing
    changes the text's length, so positions would not line up)."""
    folded = _fold(text)
    if len(folded) != len(text):
        return None
    return [m.span() for m in _WORD_RE.finditer(folded)]


def words(text: str) -> list[str]:
    """Lower-cased word tokens, contractions whole ("i'm"): the whole text's tokens."""
    return _WORD_RE.findall(_fold(text))


@dataclass(frozen=True, slots=True, eq=False)
class Reading:
    """The part of a text that features and the model read, folded and tokenised once.

    A text of at most ``READ_HEAD_CHARS + READ_TAIL_CHARS`` characters is read whole
    (``tail`` is empty); a longer one as its start (``head``) and its end (``tail``),
    cut at whitespace, so ``head`` is the first ``len(head)`` of ``words(text)`` and
    ``tail`` the last ``len(tail)`` (no word pair spans the gap between them). Compared
    by identity: ``read`` hands out one object per text while it is cached.
    """

    head: tuple[str, ...]
    tail: tuple[str, ...]
    folded: str  # the folded head, and the folded tail after a newline when there is one
    #: the whole text's length without surrounding whitespace, and its words: counted
    #: when read whole, else estimated from the characters per word of the part read
    chars: int
    words: int

    @property
    def tokens(self) -> tuple[str, ...]:
        return self.head + self.tail


def _last_space(text: str, end: int) -> int:
    """Where to end a head of at most ``end`` characters: at its last space or newline
    within its last quarter (-1 when there is none: then a cut at ``end`` splits a word)."""
    return max(text.rfind(" ", end * 3 // 4, end), text.rfind("\n", end * 3 // 4, end))


def _first_space(text: str, start: int) -> int:
    """Where to begin a tail at ``start`` or later: at its first space or newline within
    its first quarter (-1 when there is none)."""
    stop = start + READ_TAIL_CHARS // 4
    found = [i for i in (text.find(" ", start, stop), text.find("\n", start, stop)) if i >= 0]
    return min(found) if found else -1


def read(text: str) -> Reading:
    """The part of ``text`` that is read (see ``Reading``); cost bounded whatever its length."""
    if len(text) <= READ_HEAD_CHARS + READ_TAIL_CHARS:
        return _read(text, None, len(text))
    head_end = _last_space(text, READ_HEAD_CHARS)
    tail_start = _first_space(text, len(text) - READ_TAIL_CHARS)
    head = text[: READ_HEAD_CHARS if head_end < 0 else head_end]
    tail = text[len(text) - READ_TAIL_CHARS if tail_start < 0 else tail_start :]
    # Without whitespace near a cut, the word the cut splits is not read.
    return _read(head, tail, len(text), head_end < 0, tail_start < 0)


def sibling_of(reply: str, score: float) -> Sibling:
    """What the sibling index keeps of a scored reply: the words read of it (``read``,
    cached, so the reading ``features`` just made), their count, and its score."""
    reading = read(reply)
    return Sibling(frozenset(reading.tokens), reading.words, score)


@functools.lru_cache(maxsize=4096)
def _read(
    head: str, tail: str | None, length: int, split_head: bool = False, split_tail: bool = False
) -> Reading:
    # A reply is read when it is scored and again when its label is learned, often soon
    # after: the cache (keyed by the bounded slices) makes that one tokenisation.
    folded_head = _fold(head)
    head_tokens = _WORD_RE.findall(folded_head)
    if tail is None:
        n_chars = len(folded_head.strip())
        return Reading(tuple(head_tokens), (), folded_head, n_chars, len(head_tokens))
    folded_tail = _fold(tail)
    tail_tokens = _WORD_RE.findall(folded_tail)
    if split_head and head_tokens:
        head_tokens.pop()
    if split_tail and tail_tokens:
        tail_tokens.pop(0)
    lead = len(head) - len(head.lstrip())
    trail = len(tail) - len(tail.rstrip())
    n_chars = max(length - lead - trail, 0)
    n_read = len(head_tokens) + len(tail_tokens)
    read_chars = len(head) + len(tail)
    estimate = n_read + round((length - read_chars) * n_read / read_chars)
    return Reading(
        tuple(head_tokens), tuple(tail_tokens), folded_head + "\n" + folded_tail, n_chars, estimate
    )


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _overlap(tokens: Sequence[str], other: set[str]) -> float:
    """Share of the distinct ``tokens`` that also occur in ``other``."""
    mine = set(tokens)
    if not mine or not other:
        return 0.0
    return len(mine & other) / len(mine)


def features(ex: ExchangeView) -> dict[str, float | str]:
    reading = read(ex.reply)
    reply = reading.folded
    question_text = ex.question[:QUESTION_CHARS]
    question = _fold(question_text)
    reply_words = reading.tokens
    question_words = _WORD_RE.findall(question)
    earlier_bot: set[str] = set()
    for role, text in ex.history:
        if role in _BOT_ROLES:
            earlier_bot.update(read(text).tokens)

    logprob = _finite(ex.logprob_mean)
    retrieval = _finite(ex.retrieval_score)
    stripped = reply.strip()
    alpha = len(stripped.translate(_ONLY_ALPHA)) if stripped.isascii() else _alpha(stripped)
    # the joining newline of a long reply's two parts is no character of the reply
    n_read = len(stripped) - (1 if reading.tail else 0)
    votes = max(ex.user_votes, 0)
    user_rate = _finite(ex.user_helpful_rate)
    known = user_rate is not None and votes > 0
    rate = min(max(user_rate, 0.0), 1.0) if known and user_rate is not None else 0.5
    smoothed = (rate * votes + 0.5 * _RATE_PSEUDO_VOTES) / (votes + _RATE_PSEUDO_VOTES)

    return {
        "reply": ex.reply,
        "question": question_text,
        "route": ex.route or "chat",
        "model": ex.model or "unknown",
        "finish_reason": ex.finish_reason or "none",
        # log scale: the difference between 2 and 20 words matters, not 200 and 220
        "reply_words": math.log1p(reading.words),
        "reply_chars": math.log1p(reading.chars),
        "question_words": math.log1p(len(question_words)),
        "hedges": _HEDGE.count(reply),
        "refusals": _REFUSAL.count(reply),
        "apologies": _APOLOGY.count(reply),
        "echo": _overlap(reply_words, set(question_words)),
        "self_repeat": _overlap(reply_words, earlier_bot),
        "reply_is_question": 1.0 if stripped.endswith("?") else 0.0,
        "word_variety": len(set(reply_words)) / len(reply_words) if reply_words else 0.0,
        "non_alpha": 1.0 - alpha / n_read if n_read else 1.0,
        "tool_calls": float(max(ex.tool_calls, 0)),
        "finish_length": 1.0 if ex.finish_reason == "length" else 0.0,
        "logprob_mean": 0.0 if logprob is None else logprob,
        "has_logprob": 0.0 if logprob is None else 1.0,
        "retrieval_score": 0.0 if retrieval is None else retrieval,
        "has_retrieval": 0.0 if retrieval is None else 1.0,
        "user_rate": smoothed,
        "user_logit": math.log(smoothed / (1.0 - smoothed)),
        "user_votes": math.log1p(votes),
        "user_known": 1.0 if known else 0.0,
        **conversation_features(
            reply_tokens=reply_words,
            reply_words=reading.words,
            question_words=len(question_words),
            history=ex.history,
            thumbs=ex.thumbs,
            sibling=ex.sibling,
        ),
    }


def without_text(x: dict[str, float | str]) -> dict[str, float | str]:
    """``x`` as the store keeps it: without the texts (``TEXT_KEYS``)."""
    return {k: v for k, v in x.items() if k not in TEXT_KEYS}
