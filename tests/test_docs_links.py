"""The README and docs/*.md link only to files that exist and to headings that exist; the README stays short
and links every docs page."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_README_LINES = 200

FENCE = re.compile(r"^\s{0,3}(```|~~~)")
INDENTED_CODE = re.compile(r"^( {4}|\t)")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
# [text](target) or ![alt](target), optionally with a "title"; the text may wrap onto the next line (not past
# a blank one) and hold one level of brackets; the target has no spaces.
INLINE_LINK = re.compile(
    r"!?\[(?:[^\[\]\n]|\n(?![ \t]*\n)|\[[^\[\]\n]*\])*\]\([ \t]*<?([^)\s>]*)>?(?:[ \t]+[\"'(][^)]*)?\)")
REFERENCE_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s.*)?$")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:, any other scheme


def doc_files():
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


def prose_lines(text):
    """The lines outside fenced and indented code blocks, with inline code removed."""
    in_fence = in_indented = False
    previous_blank = True
    for number, line in enumerate(text.splitlines(), 1):
        blank = not line.strip()
        if FENCE.match(line):
            in_fence = not in_fence
        elif not in_fence:
            # an indented code block starts after a blank line and runs while lines stay indented or blank
            in_indented = (in_indented and (blank or bool(INDENTED_CODE.match(line)))) or (
                previous_blank and not blank and bool(INDENTED_CODE.match(line)))
            if not in_indented:
                yield number, INLINE_CODE.sub("", line)
        previous_blank = blank


def links(text):
    """(line number, target) for every inline link, image and reference definition outside code."""
    prose = dict(prose_lines(text))
    found = [(number, m.group(1)) for number, line in prose.items() if (m := REFERENCE_DEF.match(line))]
    lines = [prose.get(number, "") for number in range(1, len(text.splitlines()) + 1)]
    joined = "\n".join("" if REFERENCE_DEF.match(line) else line for line in lines)
    found += [(joined.count("\n", 0, m.start()) + 1, m.group(1)) for m in INLINE_LINK.finditer(joined)]
    return sorted(found, key=lambda item: item[0])


def slug(heading):
    """GitHub's anchor for a heading: lowercase, markup and punctuation other than '-' and '_' dropped,
    spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path):
    """Every heading's anchor in a markdown file, with GitHub's -1, -2 suffixes for repeats."""
    seen, result = {}, set()
    for _, line in prose_lines(path.read_text()):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return result


def broken_links(path):
    """Each relative link of one markdown file that does not resolve, as 'file:line: target (why)'."""
    problems = []
    for number, target in links(path.read_text()):
        if not target or EXTERNAL.match(target):
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        where = f"{path.name}:{number}: {target}"
        if not resolved.exists():
            problems.append(f"{where} (no such file or folder)")
        elif anchor and resolved.is_file() and resolved.suffix == ".md" and anchor not in anchors(resolved):
            problems.append(f"{where} (no heading '{anchor}' in {resolved.name})")
    return problems


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(path):
    assert broken_links(path) == []


def test_readme_is_short():
    lines = len(README.read_text().splitlines())
    assert lines < MAX_README_LINES, f"README.md has {lines} lines; move detail to docs/"


def test_readme_links_every_docs_page():
    linked = set()
    for _, target in links(README.read_text()):
        file_part = target.partition("#")[0]
        if file_part and not EXTERNAL.match(target):
            linked.add((README.parent / file_part).resolve())
    pages = sorted((ROOT / "docs").glob("*.md"))
    assert pages, "docs/ holds no pages"
    assert [p.name for p in pages if p.resolve() not in linked] == []


def test_the_checker_finds_broken_links(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## Some section: the one (here)\n")
    (tmp_path / "folder").mkdir()
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n"
        "[fine](other.md) [fine](other.md#some-section-the-one-here) [fine](folder) [fine](#page)\n"
        "[web](https://example.com/missing.md) [mail](mailto:someone@example.com)\n"
        "`[in code](missing-in-code.md)`\n\n"
        "    [indented code](missing-indented.md)\n\n"
        "```\n[fenced](missing-fenced.md)\n```\n\n"
        "[gone](missing.md) and ![image](img/missing.png)\n"
        "[bad anchor](other.md#no-such-heading) [bad own anchor](#nowhere)\n"
        "[ref]: missing-reference.md\n"
        "a link whose text [wraps onto\nthe next line](wrapped-missing.md) and [none\n\nacross](paragraphs.md)\n"
    )
    problems = broken_links(page)
    assert [p.split(": ", 1)[1] for p in problems] == [
        "missing.md (no such file or folder)",
        "img/missing.png (no such file or folder)",
        "other.md#no-such-heading (no heading 'no-such-heading' in other.md)",
        "#nowhere (no heading 'nowhere' in page.md)",
        "missing-reference.md (no such file or folder)",
        "wrapped-missing.md (no such file or folder)",
    ]


def test_slugs_follow_github():
    assert slug("A real report (excerpt)") == "a-real-report-excerpt"
    assert slug("Long runs: resume, evaluate, workers, Ray") == "long-runs-resume-evaluate-workers-ray"
    assert slug("Speed benchmarks (pytest-benchmark)") == "speed-benchmarks-pytest-benchmark"
    assert slug("1. Contracts") == "1-contracts"
    assert slug("`bench compare` and snake_case") == "bench-compare-and-snake_case"
