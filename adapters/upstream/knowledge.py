"""The local upstream's knowledge: the shipped entries and the retriever that finds one.

A TF-IDF retriever over the knowledge base's questions (word and character n-grams, so
typos and inflections still match) picks the closest entry; the cosine similarity of the
match is what the local upstream exposes as its ``retrieval_score`` signal.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING

import numpy as np

from middleware.errors import ConfigError

if TYPE_CHECKING:
    from sklearn.feature_extraction.text import TfidfVectorizer

__all__ = ["KBEntry", "Match", "Retriever", "load_knowledge_base"]

_CACHE_SIZE = 1024
_MAX_QUERY_CHARS = 1000


@dataclass(frozen=True, slots=True)
class KBEntry:
    id: str
    question: str
    answer: str
    alt_questions: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Match:
    entry: KBEntry | None
    similarity: float


def load_knowledge_base(raw: str | bytes | None = None) -> list[KBEntry]:
    """Parse and check a knowledge base (the shipped ``local_kb.json`` when ``raw`` is None)."""
    if raw is None:
        raw = resources.files("adapters.upstream").joinpath("local_kb.json").read_bytes()
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ConfigError(f"local knowledge base is not valid JSON ({exc})") from None
    if not isinstance(data, list) or not data:
        raise ConfigError("local knowledge base must be a non-empty JSON array of entries")
    entries: list[KBEntry] = []
    seen: set[str] = set()
    for position, item in enumerate(data):
        where = f"local knowledge base entry {position}"
        if not isinstance(item, dict):
            raise ConfigError(f"{where} must be an object")
        for key in ("id", "question", "answer"):
            if not isinstance(item.get(key), str) or not item[key].strip():
                raise ConfigError(f"{where}: {key!r} must be a non-empty string")
        alts = item.get("alt_questions", [])
        if not isinstance(alts, list) or not all(isinstance(a, str) and a.strip() for a in alts):
            raise ConfigError(f"{where}: 'alt_questions' must be a list of non-empty strings")
        if item["id"] in seen:
            raise ConfigError(f"{where}: duplicate id {item['id']!r}")
        seen.add(item["id"])
        entries.append(KBEntry(item["id"], item["question"], item["answer"], tuple(alts)))
    return entries


class _Space:
    """One fitted TF-IDF space, applied to a query without scikit-learn's per-call overhead.

    ``TfidfVectorizer.transform`` costs about half a millisecond per call in input checks
    and sparse bookkeeping; the same arithmetic on one short query takes tens of microseconds.
    """

    def __init__(self, vectorizer: TfidfVectorizer, offset: int) -> None:
        self.vectorizer = vectorizer
        self.analyze = vectorizer.build_analyzer()
        self.vocabulary: dict[str, int] = vectorizer.vocabulary_
        self.idf: np.ndarray = vectorizer.idf_
        self.offset = offset

    def vector(self, text: str) -> dict[int, float]:
        counts: dict[int, int] = {}
        for term in self.analyze(text):
            column = self.vocabulary.get(term)
            if column is not None:
                counts[column] = counts.get(column, 0) + 1
        # sublinear tf, idf, then L2: what TfidfVectorizer(sublinear_tf=True) computes
        weights = {c: (1.0 + math.log(n)) * float(self.idf[c]) for c, n in counts.items()}
        norm = math.sqrt(sum(w * w for w in weights.values()))
        return {self.offset + c: w / norm for c, w in weights.items()} if norm else {}


class Retriever:
    """Cosine similarity over TF-IDF vectors of every question and alternative question.

    Word n-grams (stop words removed) carry the topic; character n-grams forgive typos
    and inflections. Each space is L2-normalised and they weigh the same, so a similarity
    is the mean of the two cosines, in [0, 1].
    """

    def __init__(
        self,
        entries: Sequence[KBEntry],
        spaces: Sequence[_Space],
        matrix: np.ndarray,
        rows: Sequence[int],
    ) -> None:
        self.entries = list(entries)
        self.spaces = list(spaces)
        self._matrix = matrix  # features x questions, dense: a few MB, fast row gathers
        self._rows = list(rows)
        self._cache: OrderedDict[str, Match] = OrderedDict()

    @classmethod
    def fit(cls, entries: Sequence[KBEntry]) -> Retriever:
        # Imported here: scikit-learn takes about half a second to import, and a gateway
        # serving a remote upstream never needs it.
        from scipy.sparse import hstack
        from sklearn.feature_extraction.text import TfidfVectorizer

        texts: list[str] = []
        rows: list[int] = []
        for index, entry in enumerate(entries):
            for text in (entry.question, *entry.alt_questions):
                texts.append(text)
                rows.append(index)
        words = TfidfVectorizer(
            analyzer="word", ngram_range=(1, 2), sublinear_tf=True, stop_words="english"
        )
        chars = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), sublinear_tf=True)
        blocks = [words.fit_transform(texts), chars.fit_transform(texts)]
        matrix = hstack(blocks).T.toarray().astype(np.float32)
        spaces = [_Space(words, 0), _Space(chars, blocks[0].shape[1])]
        return cls(entries, spaces, matrix, rows)

    def similarities(self, query: str) -> np.ndarray:
        """Similarity of ``query`` to every question row (not yet grouped by entry)."""
        vector: dict[int, float] = {}
        for space in self.spaces:
            vector.update(space.vector(query))
        if not vector:
            return np.zeros(self._matrix.shape[1], dtype=np.float32)
        columns = np.fromiter(vector.keys(), dtype=np.intp, count=len(vector))
        values = np.fromiter(vector.values(), dtype=np.float32, count=len(vector))
        scores: np.ndarray = values @ self._matrix[columns]
        return scores / len(self.spaces)

    def best(self, query: str) -> Match:
        # Only the start of a long message is looked at: analysing a pasted document
        # character by character would hold the event loop for milliseconds.
        key = " ".join(query[:_MAX_QUERY_CHARS].lower().split())
        if not key:
            return Match(None, 0.0)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        scores = self.similarities(key)
        row = int(scores.argmax())
        similarity = min(1.0, max(0.0, float(scores[row])))
        match = Match(self.entries[self._rows[row]] if similarity > 0 else None, similarity)
        self._cache[key] = match
        if len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)
        return match
