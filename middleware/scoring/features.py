"""What the model sees of one exchange: a flat, JSON-serialisable river feature dict.

``features()`` is pure and cheap (it runs on every chat request). The texts stay as
strings under ``"reply"`` and ``"question"``; the model's pipeline turns them into
word features, so the vocabulary is the model's business. The store keeps the dict
``without_text``: the texts are in the exchange's own columns, once.
Every numeric key in ``NUMERIC_KEYS`` is always present (0.0 plus a ``has_*`` flag when
a signal is missing), so the anomaly detector sees a fixed-width vector.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

__all__ = [
    "NUMERIC_KEYS",
    "QUESTION_CHARS",
    "TEXT_KEYS",
    "ExchangeView",
    "features",
    "without_text",
    "word_spans",
    "words",
]

#: The features that are raw text: stored once, in the exchange's own columns, never
#: again inside ``features_json`` (the learner puts them back from those columns).
TEXT_KEYS = ("reply", "question")
#: How much of the question (and of each earlier turn) the features read, and the
#: ``question`` column keeps: the whole request is already in ``request_json``.
QUESTION_CHARS = 4000


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


NUMERIC_KEYS: tuple[str, ...] = (
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
    alternatives = sorted((re.escape(p) for p in phrases), key=len, reverse=True)
    return re.compile(r"(?<![\w'])(?:" + "|".join(alternatives) + r")(?![\w'])")


_HEDGE_RE = _phrase_pattern(_HEDGES)
_REFUSAL_RE = _phrase_pattern(_REFUSALS)
_APOLOGY_RE = _phrase_pattern(_APOLOGIES)
_WORD_RE = re.compile(r"[^\W_]+(?:'[^\W_]+)?")
_BOT_ROLES = frozenset({"assistant", "bot"})
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "`": "'"})

# A user's rate is shrunk toward a neutral 0.5 by this many pseudo-votes, so one early
# thumb does not read as a verdict on the user.
_RATE_PSEUDO_VOTES = 2.0


def word_spans(text: str) -> list[tuple[int, int]] | None:
    """Where each of ``words(text)`` lies in ``text`` itself (None when lower-casing
    changes the text's length, so positions would not line up)."""
    folded = text.translate(_APOSTROPHES).lower()
    if len(folded) != len(text):
        return None
    return [m.span() for m in _WORD_RE.finditer(folded)]


def words(text: str) -> list[str]:
    """Lower-cased word tokens, contractions whole ("i'm"); the model's tokenizer too."""
    return _WORD_RE.findall(text.translate(_APOSTROPHES).lower())


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _overlap(tokens: list[str], other: set[str]) -> float:
    """Share of the distinct ``tokens`` that also occur in ``other``."""
    mine = set(tokens)
    if not mine or not other:
        return 0.0
    return len(mine & other) / len(mine)


def features(ex: ExchangeView) -> dict[str, float | str]:
    reply = ex.reply.translate(_APOSTROPHES).lower()
    question_text = ex.question[:QUESTION_CHARS]
    question = question_text.translate(_APOSTROPHES).lower()
    # Already lower-cased and straightened: tokenise directly rather than through words().
    reply_words = _WORD_RE.findall(reply)
    question_words = _WORD_RE.findall(question)
    earlier_bot: set[str] = set()
    for role, text in ex.history:
        if role in _BOT_ROLES:
            earlier_bot.update(words(text[:QUESTION_CHARS]))

    logprob = _finite(ex.logprob_mean)
    retrieval = _finite(ex.retrieval_score)
    stripped = reply.strip()
    n_chars = len(stripped)
    alpha = sum(map(str.isalpha, stripped))
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
        "reply_words": math.log1p(len(reply_words)),
        "reply_chars": math.log1p(n_chars),
        "question_words": math.log1p(len(question_words)),
        "hedges": float(len(_HEDGE_RE.findall(reply))),
        "refusals": float(len(_REFUSAL_RE.findall(reply))),
        "apologies": float(len(_APOLOGY_RE.findall(reply))),
        "echo": _overlap(reply_words, set(question_words)),
        "self_repeat": _overlap(reply_words, earlier_bot),
        "reply_is_question": 1.0 if stripped.endswith("?") else 0.0,
        "word_variety": len(set(reply_words)) / len(reply_words) if reply_words else 0.0,
        "non_alpha": 1.0 - alpha / n_chars if n_chars else 1.0,
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
    }


def without_text(x: dict[str, float | str]) -> dict[str, float | str]:
    """``x`` as the store keeps it: without the texts (``TEXT_KEYS``)."""
    return {k: v for k, v in x.items() if k not in TEXT_KEYS}
