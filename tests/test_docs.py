"""The README is a front door a newcomer reads in minutes, and no link in the docs leads nowhere."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens, repeats numbered."""
    out: set[str] = set()
    fenced = False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        m = None if fenced else re.match(r"#{1,6} (.+)", line)
        if m:
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            n, base = 1, slug
            while slug in out:
                slug, n = f"{base}-{n}", n + 1
            out.add(slug)
    return out


def test_readme_is_short() -> None:
    assert (ROOT / "README.md").stat().st_size < 10_240


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_resolves(page: Path) -> None:
    broken = []
    for target in LINK.findall(page.read_text()):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no such heading in {file.name}")
    assert not broken, f"{page.name}: " + "; ".join(broken)


def test_anchor_rule() -> None:
    page = ROOT / "docs" / "durability.md"
    assert "durability-checkpoints-the-journal-restarts" in anchors(page)
    assert "measured-durability" in anchors(page)


def test_the_metric_table_names_every_metric_exported_and_every_reason() -> None:
    """Issue 40: the table had lost three metrics and three drop reasons. Checked against the code."""
    from prometheus_client import CollectorRegistry

    from streamrnn.daemon.metrics import DROP_REASONS, Metrics
    from streamrnn.engine.health import REASONS

    registry = CollectorRegistry()
    Metrics(registry, ("a",), 2, stream_cap=1)
    suffix = {"counter": "_total", "info": "_info"}
    exported = {f.name.removeprefix("streamrnn_") + suffix.get(f.type, "") for f in registry.collect() if f.name.startswith("streamrnn_")}
    table = (ROOT / "docs" / "observability.md").read_text().split("| metric | type | what |", 1)[1].split("\n\n", 1)[0]
    rows = [row.split("|") for row in table.splitlines()[1:]]
    documented = {re.sub(r"\{.*?\}", "", name) for row in rows for name in re.findall(r"`([^`]+)`", row[1])}
    assert exported == documented, f"not in the table: {sorted(exported - documented)}; not exported: {sorted(documented - exported)}"
    said = {row[1]: row[3] for row in rows}
    dropped = re.search(r"by reason \(([^:)]*)", next(w for k, w in said.items() if "messages_dropped_total" in k)).group(1)
    assert set(dropped.replace(" ", "").split(",")) == set(DROP_REASONS)
    spells = re.search(r"by reason \(([^:)]*)", next(w for k, w in said.items() if "suspect_spells_total" in k)).group(1)
    assert set(spells.replace(" ", "").split(",")) == set(REASONS[1:])
