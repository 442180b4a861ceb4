"""What ``[privacy] redact`` costs a request: the shipped patterns on a 200-word reply.

    python bench/redaction.py [--words 200] [--number 2000] [--repeat 15]

Times (``timeit``, median of ``--repeat`` runs of ``--number`` calls, in µs per call)
``Redactor`` with the patterns ``config.toml`` ships, on a reply of ``--words`` words
made of the local model's own answers: plain prose, prose with a few numbers in it
(dates, prices, durations: the digits the card and phone patterns look for), and prose
with an e-mail address, a card number and a phone number to mask. Then what the reply
flow masks per request (the request with a system prompt, the question and the reply),
and, for comparison, the same patterns as one alternation and one after another without
the shortcut that skips a pattern on a text that can't hold a match. No patterns: the
flow skips redaction altogether (``if self.redact``).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import timeit
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from middleware.review.privacy import Redactor, luhn_valid  # noqa: E402
from middleware.settings import load_settings  # noqa: E402


def reply_of(words: int) -> str:
    entries = json.loads((ROOT / "adapters/upstream/local_kb.json").read_text())
    text: list[str] = []
    while len(text) < words:
        for entry in entries:
            text += entry["answer"].split()
    return " ".join(text[:words])


def with_numbers(text: str) -> str:
    words = text.split()
    extras = ("on 2024-08-06", "for $1,250.00", "in 30 days", "at 12:30")
    for n, extra in enumerate(extras):
        words[min(20 + 40 * n, len(words) - 1)] += " " + extra
    return " ".join(words)


def with_secrets(text: str) -> str:
    words = text.split()
    words[30] += " write to zelda.quux@example.org,"
    words[90] += " card 4111 1111 1111 1111,"
    words[150] += " or call +44 20 7946 0958."
    return " ".join(words)


def median_us(call: Callable[[], object], number: int, repeat: int) -> float:
    return statistics.median(timeit.repeat(call, number=number, repeat=repeat)) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--words", type=int, default=200)
    parser.add_argument("--number", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()

    patterns = load_settings(ROOT / "config.toml", {}).privacy.redact
    redact = Redactor(patterns)
    plain = reply_of(args.words)
    texts = {
        "prose": plain,
        "prose with numbers": with_numbers(plain),
        "prose with e-mail, card, phone": with_secrets(plain),
    }
    one = re.compile("|".join(f"(?P<_{i}>{p})" for i, p in enumerate(patterns)))
    luhn = {f"_{i}" for i, p in enumerate(patterns) if p.startswith("(?#luhn)")}

    def alternation(text: str) -> str:
        def mask(m: re.Match[str]) -> str:
            keep = m.lastgroup in luhn and not luhn_valid(m.group())
            return m.group() if keep else "[redacted]"

        return one.sub(mask, text)

    each = [re.compile(p) for p in patterns]

    def one_by_one(text: str) -> str:
        for pattern in each:
            text = pattern.sub("[redacted]", text)
        return text

    print(f"{len(patterns)} shipped patterns, a reply of {args.words} words")
    print(f"{'text':34} {'chars':>6} {'Redactor':>10} {'alternation':>12} {'no shortcut':>12}")
    for name, text in texts.items():
        assert ("[redacted]" in redact(text)) == ("secrets" in name or "e-mail" in name)
        n, r = args.number, args.repeat
        print(
            f"{name:34} {len(text):6d} {median_us(lambda t=text: redact(t), n, r):8.1f}µs"
            f" {median_us(lambda t=text: alternation(t), n, r):10.1f}µs"
            f" {median_us(lambda t=text: one_by_one(t), n, r):10.1f}µs"
        )
    # What the reply flow masks of one request: the request (system prompt, question)
    # and the reply; the question is read from the masked request.
    payload = {
        "model": "gpt-4o-mini",
        "user": "u-1",
        "messages": [
            {"role": "system", "content": reply_of(60)},
            {"role": "user", "content": "How do I send feedback on a reply?"},
        ],
    }
    reply = texts["prose with numbers"]
    per_request = median_us(
        lambda: (redact.request(payload), redact(reply)), args.number, args.repeat
    )
    empty = Redactor([])
    skipped = median_us(lambda: bool(empty) and empty(reply), args.number, args.repeat)
    print(f"per request (60-word system prompt, question, reply with numbers): {per_request:.1f}µs")
    print(f"no patterns (the flow's check): {skipped:.2f}µs")


if __name__ == "__main__":
    main()
