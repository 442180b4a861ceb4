"""The README's code blocks, by the marker right above each one.

``<!-- example: NAME -->`` marks a block a test runs against a real gateway (by that
name: ``example("NAME")``); ``<!-- not-runnable: REASON -->`` one that no test can run,
and why. A shell, Python or JavaScript block with neither fails ``test_readme_blocks``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
#: block languages a user would paste and run: these must be marked
RUNNABLE = frozenset({"sh", "bash", "shell", "console", "python", "py", "js", "javascript"})
#: the address every README example uses; a test puts its gateway's in its place
README_ADDRESSES = ("http://127.0.0.1:8000", "localhost:8000")

_FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>[\w-]*)\s*$")
_MARK = re.compile(r"^\s*<!--\s*(?P<kind>example|not-runnable):\s*(?P<value>.*?)\s*-->\s*$")


@dataclass(frozen=True, slots=True)
class Block:
    lang: str
    text: str
    #: 1-based line of the opening fence
    line: int
    #: "example", "not-runnable" or None (unmarked)
    mark: str | None
    #: the example's name, or why it cannot run
    value: str


def blocks(path: Path = README) -> list[Block]:
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent = opening["indent"]
        body: list[str] = []
        j = i + 1
        while j < len(lines) and lines[j].strip() != "```":
            body.append(lines[j][len(indent) :] if lines[j].startswith(indent) else lines[j])
            j += 1
        previous = next((lines[k] for k in range(i - 1, -1, -1) if lines[k].strip()), "")
        mark = _MARK.match(previous)
        found.append(
            Block(
                lang=opening["lang"],
                text="\n".join(body) + "\n",
                line=i + 1,
                mark=mark["kind"] if mark else None,
                value=mark["value"] if mark else "",
            )
        )
        i = j + 1
    return found


def example(name: str, *, url: str | None = None, path: Path = README) -> str:
    """The text of the README's example ``name``; with ``url``, pointed at that gateway
    (as a user running it elsewhere than port 8000 would edit it)."""
    chosen = [b for b in blocks(path) if b.mark == "example" and b.value == name]
    if len(chosen) != 1:
        raise LookupError(f"README.md has {len(chosen)} examples named {name!r}, not one")
    text = chosen[0].text
    if url is not None:
        host = url.removeprefix("http://")
        text = text.replace(README_ADDRESSES[0], url).replace(README_ADDRESSES[1], host)
    return text
