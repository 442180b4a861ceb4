"""No README block a user would paste goes untested without saying why."""

from __future__ import annotations

import re
from pathlib import Path

from tests.docs.readme import README_ADDRESSES, ROOT, RUNNABLE, Block, blocks

TESTS = ROOT / "tests"


def test_every_runnable_block_is_an_example_or_says_why_not() -> None:
    unmarked = [b for b in blocks() if b.lang in RUNNABLE and b.mark is None]
    assert not unmarked, "README.md blocks with neither <!-- example: NAME --> nor " + (
        "<!-- not-runnable: REASON --> right above them: "
        + ", ".join(f"line {b.line} ({b.lang})" for b in unmarked)
    )
    assert all(b.value for b in blocks() if b.mark == "not-runnable"), "a reason is required"


def test_example_names_are_unique() -> None:
    names = [b.value for b in blocks() if b.mark == "example"]
    assert names and len(names) == len(set(names)), names


def test_every_example_is_run_by_a_test() -> None:
    """Each example is run by name, ``example(<its name>)``, in a test under tests/docs or
    tests/clients: a new example without a test fails here."""
    sources = "\n".join(
        p.read_text(encoding="utf-8")
        for folder in ("docs", "clients")
        for p in sorted((TESTS / folder).glob("test_*.py"))
    )
    called = set(re.findall(r'example\(\s*"([^"]+)"', sources))
    names = {b.value for b in blocks() if b.mark == "example"}
    assert names - called == set(), f"README examples no test runs: {sorted(names - called)}"
    assert called - names == set(), f"tests run examples the README lacks: {called - names}"


def test_examples_use_the_address_the_tests_replace() -> None:
    """A test points an example at its own gateway by replacing the README's address, so
    an example that names another address would silently test nothing."""
    for block in blocks():
        if block.mark == "example":
            urls = re.findall(r"https?://[\w.:-]+|localhost:\d+", block.text)
            assert all(u in README_ADDRESSES for u in urls), (block.line, urls)


def test_the_parser_sees_marks_indented_blocks_and_unmarked_ones(tmp_path: Path) -> None:
    page = tmp_path / "README.md"
    page.write_text(
        "<!-- example: one -->\n```sh\necho 1\n```\n\n"
        "1. a step\n\n   <!-- not-runnable: needs Slack -->\n   ```sh\n   export A=1\n   ```\n"
        "```python\nprint(2)\n```\n```\nplain diagram\n```\n",
        encoding="utf-8",
    )
    assert blocks(page) == [
        Block("sh", "echo 1\n", 2, "example", "one"),
        Block("sh", "export A=1\n", 9, "not-runnable", "needs Slack"),
        Block("python", "print(2)\n", 12, None, ""),
        Block("", "plain diagram\n", 15, None, ""),
    ]
