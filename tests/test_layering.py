"""The layering the code shows, enforced: who may import whom, and how long a module
may grow. Every import is read from the source (also those inside functions)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("middleware", "adapters", "feedback_store")
#: what an adapter may import from the gateway: the seams it fills and their values
ADAPTER_MAY_USE = ("middleware.ports", "middleware.errors", "middleware.vocabulary")
#: the only places that know the adapters
MAY_IMPORT_ADAPTERS = ("middleware.app", "middleware.cli")
#: parts of the gateway that know nothing of HTTP
FREE_OF_HTTP = (
    "middleware.flows",
    "middleware.scoring",
    "middleware.learning",
    "middleware.review",
)
HTTP_MODULES = ("starlette", "middleware.http", "middleware.app")
MAX_LINES = 400
#: generated or data-like files the length rule does not cover
LENGTH_EXEMPT = ("feedback_store/migrations/",)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def sources() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in ``path``, relative ones resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            # "from middleware import ports" names a module too
            found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names]
    return found


def within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def breaks(path: Path) -> list[str]:
    """Every import in ``path`` that crosses a layer it must not cross."""
    me = module_name(path)
    found: list[str] = []
    seen: set[tuple[int, str]] = set()

    def report(line: int, where: str, rule: str) -> None:
        if (line, rule) not in seen:  # "from x import y" is one import, not two
            seen.add((line, rule))
            found.append(f"{where}: {rule}")

    for line, target in imports_of(path):
        where = f"{path.relative_to(ROOT)}:{line} imports {target}"
        if within(me, ("feedback_store",)) and within(target, ("middleware", "adapters")):
            report(line, where, "feedback_store imports nothing of ours")
        if within(me, ("adapters",)):
            if within(target, ("feedback_store",)):
                report(line, where, "adapters never touch the store")
            # "from middleware import ports" is checked through its full name
            if (
                within(target, ("middleware",))
                and target != "middleware"
                and not within(target, ADAPTER_MAY_USE)
            ):
                report(line, where, f"adapters use only {', '.join(ADAPTER_MAY_USE)}")
        if within(target, ("adapters",)) and not within(me, ("adapters", *MAY_IMPORT_ADAPTERS)):
            report(line, where, f"only {', '.join(MAY_IMPORT_ADAPTERS)} import adapters")
        if within(me, FREE_OF_HTTP) and within(target, HTTP_MODULES):
            report(line, where, "flows, scoring, learning and review know nothing of HTTP")
    return found


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_respect_the_layers(path: Path) -> None:
    assert breaks(path) == []


@pytest.mark.parametrize(
    "path",
    [p for p in sources() if not str(p.relative_to(ROOT)).startswith(LENGTH_EXEMPT)],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_no_module_is_over_the_length_limit(path: Path) -> None:
    relative = str(path.relative_to(ROOT))
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, (
        f"{relative} has {lines} lines; split it by job (at most {MAX_LINES})"
    )


def test_bench_modules_stay_short_too() -> None:
    long = {
        str(p.relative_to(ROOT)): n
        for p in (ROOT / "bench").rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def test_the_checker_catches_a_break(tmp_path: Path) -> None:
    """The rule itself can fail: an adapter that reaches into the store is reported."""
    fake = ROOT / "adapters" / "_layering_probe.py"
    fake.write_text("from feedback_store import Store\nfrom middleware.http import chat\n")
    try:
        found = breaks(fake)
    finally:
        fake.unlink()
    assert len(found) == 2
    assert "adapters never touch the store" in found[0]
    assert "adapters use only" in found[1]
