"""The README and docs/ against the repository: figures, links, length (no training, no imports
of the frameworks).

The figure rule (README.md, and docs/*.md alike): outside fenced code blocks, inline code spans
and link targets, every *figure* must be held by a file of ``docs/results/``. A figure is

- a decimal number (digits, optional thousands commas, a point, digits; a sign when one stands
  directly before it), not part of a dotted version such as 2.13.0 (versions belong in code
  spans anyway), or
- a number followed by a unit: ``x`` or ``%`` written against it (``3.6x``, ``80%``), or
  ``s``, ``ms``, ``GiB``, ``MiB``, ``GB``, ``MB``, ``KiB``, ``q/s``, ``examples/s`` after an
  optional space (``65 s``, ``4 GiB``).

Integers without a unit (epochs, seeds, k, counts) are not figures. A figure is held when

- its text appears in a text file of ``docs/results/`` (``.md``, ``.txt``, ``.json``) with no
  digit or decimal point directly before it and no digit directly after it, or
- some number in a JSON file of ``docs/results/`` rounds to it at its number of decimals
  (Python's ``format(value, ".Nf")``, or half-up rounding of the value's shortest repr), or
- it is in ms and the same value in seconds is held (the JSON files keep seconds).

So a figure is either quoted from an artifact at the artifact's precision or correctly rounded
from it; ``test_the_rule_rejects_a_figure_no_artifact_holds`` shows the check failing on a
changed README figure. The check is necessary, not sufficient: it does not tie a figure to the
file named beside it, and a figure with few decimals is easily held by some unrelated number.
Beside it: every README table of figures names a file of ``docs/results/`` and the command that
wrote it in the text just above it; every relative link and image of README.md and docs/*.md
names an existing file, and an ``#anchor`` a heading of that file (GitHub's slug rule);
README.md has at most 160 lines and keeps CI's test command.
"""
from __future__ import annotations

import json
import re
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
RESULTS = DOCS / "results"
MAX_README_LINES = 160
TEXT_SUFFIXES = (".md", ".txt", ".json")

_FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.S | re.M)
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
_LINK = re.compile(r"(!?)\[((?:[^\[\]]|\[[^\]]*\])*)\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_NUMBER = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?"
# A decimal number, not glued to a word, another number or a dotted version (2.13.0).
# A sign belongs to the number when nothing word-like stands before it (+0.00007, -0.00063).
_SIGN = r"(?:(?<![\w.,+-])[-+])?"
_DECIMAL = re.compile(r"(?<![\w.,])(" + _SIGN + r"(?:\d{1,3}(?:,\d{3})+\.\d+|\d+\.\d+))"
                      r"(?![\w]|\.\d|,\d)")
_UNIT = re.compile(r"(?<![\w.,])(" + _SIGN + "(?:" + _NUMBER + r"))(?:(x|%)|[ \u00a0]?(ms|s|GiB"
                   r"|MiB|KiB|GB|MB|q/s|examples/s))(?![\w/])")


def prose(markdown: str) -> str:
    """The text a reader sees as prose or tables: fenced blocks, code spans and link targets
    removed (each replaced by a space so that nothing on either side joins up)."""
    text = _FENCE.sub(" ", markdown)
    text = _CODE_SPAN.sub(" ", text)
    return _LINK.sub(lambda m: f"{m.group(1)}[{m.group(2)}] ", text)


def _figures(markdown: str) -> list[tuple[str, str]]:
    """(figure as written, its unit or "") of a Markdown text, in order."""
    text = prose(markdown)
    found = [(m.start(1), m.group(1), "") for m in _DECIMAL.finditer(text)]
    units = {m.start(1): (m.group(1), m.group(2) or m.group(3)) for m in _UNIT.finditer(text)}
    found = [(start, f, units.pop(start, (f, ""))[1]) for start, f, _ in found]
    found += [(start, f, unit) for start, (f, unit) in units.items()]
    return [(f, unit) for _, f, unit in sorted(found)]


def figures(markdown: str) -> list[str]:
    """The figures of a Markdown text under the rule above, in order, as written."""
    return [f for f, _ in _figures(markdown)]


def _json_numbers(value) -> list[float]:
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [float(value)]
    if isinstance(value, dict):
        return [x for v in value.values() for x in _json_numbers(v)]
    if isinstance(value, list):
        return [x for v in value for x in _json_numbers(v)]
    return []


@lru_cache(maxsize=1)
def artifacts() -> tuple[str, tuple[float, ...]]:
    """All text of docs/results/ (one string) and every number of its JSON files."""
    texts, numbers = [], []
    for path in sorted(RESULTS.rglob("*")):
        if path.suffix not in TEXT_SUFFIXES or not path.is_file():
            continue
        text = path.read_text(encoding="utf-8")
        texts.append(text)
        if path.suffix == ".json":
            numbers += _json_numbers(json.loads(text))
    return "\n".join(texts), tuple(numbers)


def _roundings(value: float, decimals: int) -> set[str]:
    out = {format(value, f".{decimals}f")}
    try:
        out.add(str(Decimal(repr(value)).quantize(Decimal(1).scaleb(-decimals), ROUND_HALF_UP)))
    except InvalidOperation:  # inf, nan
        pass
    return out


@lru_cache(maxsize=None)
def _rounded(numbers: tuple[float, ...], decimals: int) -> frozenset[str]:
    """Every JSON number of docs/results/ written with ``decimals`` decimals, both ways."""
    return frozenset(r for v in numbers for r in _roundings(v, decimals))


def held(figure: str, text: str, numbers: tuple[float, ...], unit: str = "") -> bool:
    """Whether docs/results holds ``figure`` (as written) by the rule above; a figure in ms
    may also be held in seconds (the JSON files keep seconds)."""
    if re.search(r"(?<![\d.])" + re.escape(figure) + r"(?!\d)", text):
        return True
    plain = figure.replace(",", "").lstrip("+")
    decimals = len(plain.split(".")[1]) if "." in plain else 0
    if plain in _rounded(numbers, decimals):
        return True
    if unit == "ms":
        seconds = str(Decimal(plain).scaleb(-3))
        return held(seconds, text, numbers)
    return False


def unheld(markdown: str) -> list[str]:
    text, numbers = artifacts()
    return [f for f, unit in _figures(markdown) if not held(f, text, numbers, unit)]


# -- the figure rule ------------------------------------------------------------------------

def test_every_readme_figure_is_held_by_docs_results():
    assert RESULTS.is_dir() and any(RESULTS.glob("*.json"))
    readme = README.read_text(encoding="utf-8")
    assert figures(readme), "the README's results table went missing"
    missing = unheld(readme)
    assert not missing, (
        f"README.md figures that no file of docs/results/ holds: {missing}; quote the artifact "
        "(at its precision or correctly rounded) or write 'not recorded'")


@pytest.mark.parametrize("path", sorted(DOCS.glob("*.md")), ids=lambda p: p.name)
def test_every_docs_figure_is_held_by_docs_results(path):
    """docs/*.md follow the same rule (a measured figure, a ratio or a constant that no artifact
    holds must be rewritten in terms of figures that one does, or say 'not recorded')."""
    missing = unheld(path.read_text(encoding="utf-8"))
    assert not missing, f"docs/{path.name}: figures that no file of docs/results/ holds: {missing}"


def test_the_rule_rejects_a_figure_no_artifact_holds():
    readme = README.read_text(encoding="utf-8")
    held_figure = "0.2742"                       # the seed model's top-100, quality_100k.md
    assert held_figure in figures(readme) and held_figure not in unheld(readme)
    changed = readme.replace(held_figure, "0.2732", 1)
    assert unheld(changed) == ["0.2732"]
    # Units count, integers without one do not, code and link targets are not prose.
    sample = ("took 7.4 min, 65 s, 3.9x, 12 GiB in 100 epochs with seed 4242; "
              "`9.87` [a 1.5 link](x/1.25.md) torch 2.13.0\n```\n0.12345\n```\n")
    assert figures(sample) == ["7.4", "65", "3.9", "12", "1.5"]


def test_rounding_and_literal_rules():
    text, numbers = "| 0.2939 | 1,207 |", (0.29385, 0.0029824859127692, 1772.707)
    assert held("0.2939", text, ()) and held("1,207", text, ())
    assert held("0.0030", "", numbers) and held("1,773", "", numbers)
    assert not held("0.0031", "", numbers) and not held("0.29", text + " 0.293", ())
    assert not held("1.2", "v 11.25", ())       # no match inside another number


def test_every_readme_table_of_figures_names_its_command_and_artifact():
    lines = README.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        if not lines[i].startswith("|"):
            i += 1
            continue
        start = i
        while i < len(lines) and lines[i].startswith("|"):
            i += 1
        if not figures("\n".join(lines[start:i])):
            continue
        before = []
        j = start - 1
        while j >= 0 and len(before) < 15 and not lines[j].startswith(("#", "|")):
            before.append(lines[j])
            j -= 1
        context = "\n".join(before)
        assert "docs/results/" in context, f"table at line {start + 1}: no docs/results/ file named"
        assert re.search(r"`(python -m |twostage )", context), (
            f"table at line {start + 1}: the command that wrote it is not named")


# -- links and length -----------------------------------------------------------------------

def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = _FENCE.sub("", path.read_text(encoding="utf-8"))
    out, seen = set(), {}
    for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.M):
        base = slug(m.group(1))
        n = seen.get(base, 0)
        out.add(base if n == 0 else f"{base}-{n}")
        seen[base] = n + 1
    return out


def relative_links(path: Path) -> list[str]:
    text = _FENCE.sub(" ", path.read_text(encoding="utf-8"))
    text = _CODE_SPAN.sub(" ", text)
    return [m.group(3) for m in _LINK.finditer(text)
            if not re.match(r"^[a-z][a-z0-9+.-]*:", m.group(3), re.I)]


DOC_FILES = [README, *sorted(DOCS.glob("*.md"))]


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_to_existing_files(path):
    broken = []
    for target in relative_links(path):
        name, _, anchor = target.partition("#")
        dest = (path.parent / name).resolve() if name else path
        if not dest.exists():
            broken.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target} (no such heading)")
    assert not broken, f"{path.relative_to(ROOT)}: broken links {broken}"


def test_the_docs_the_readme_promises_are_linked():
    linked = {t.partition("#")[0] for t in relative_links(README)}
    for name in ("seed", "usage", "data", "results", "performance", "gpu", "distributed",
                 "indexes", "serving", "safety", "semantics", "decisions", "CONTRIBUTING"):
        assert f"docs/{name}.md" in linked, f"README.md does not link docs/{name}.md"
    assert "../shared" not in README.read_text(encoding="utf-8")


def test_readme_is_short():
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_README_LINES, f"README.md has {n} lines (at most {MAX_README_LINES})"


def test_readme_keeps_the_ci_test_command():
    """CI runs the README's test command verbatim (.ci/run's last command)."""
    readme = README.read_text(encoding="utf-8").splitlines()
    assert "python3 -m pytest" in readme
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()
    assert ci[-1].strip() == "python3 -m pytest"
