"""The documentation's links resolve: every relative link in README.md, CONTRIBUTING.md, CHANGELOG.md and docs/ names
a file of the checkout, and every #anchor a heading of its target (GitHub's slugs)."""
import pathlib
import re

from helpers import ROOT

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _slug(heading):
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path):
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    return {_slug(line.lstrip("#")) for line in text.split("\n") if line.startswith("#")}


def broken_links(root):
    root = pathlib.Path(root)
    files = [root / n for n in ("README.md", "CONTRIBUTING.md", "CHANGELOG.md")] + sorted((root / "docs").rglob("*.md"))
    broken = []
    for page in files:
        text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
        for target in LINK.findall(text):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                broken.append(f"{page.relative_to(root)}: {target}: no such file")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{page.relative_to(root)}: {target}: no heading #{anchor}")
    return broken


def test_every_link_of_the_documentation_resolves():
    assert broken_links(ROOT) == []


def test_a_broken_link_and_a_missing_anchor_are_found(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "CONTRIBUTING.md").write_text("# How\n")
    (tmp_path / "CHANGELOG.md").write_text("# Changes\n")
    (tmp_path / "README.md").write_text("[a](docs/x.md) [b](CONTRIBUTING.md#how) [c](CONTRIBUTING.md#why) "
                                        "[d](https://example.org)\n```\n[e](nowhere.md)\n```\n")
    assert broken_links(tmp_path) == ["README.md: docs/x.md: no such file",
                                      "README.md: CONTRIBUTING.md#why: no heading #why"]
