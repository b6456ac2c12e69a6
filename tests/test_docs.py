"""docs/ stays true to the code: named paths exist, every algorithm is described, links resolve."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from metalearn_cli.components import REGISTRIES

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def test_every_path_named_in_the_concepts_exists():
    text = (DOCS / "concepts.md").read_text()
    paths = set(re.findall(r"`((?:configs|metalearn_cli|scripts)/[\w/.]*)`", text))
    assert len(paths) > 15
    for path in paths:
        assert (ROOT / path).exists(), f"docs/concepts.md names {path}, which does not exist"


@pytest.mark.parametrize("group", ["strategy", "decoder", "encoder"])
def test_algorithms_describe_every_registered_component_and_nothing_else(group):
    text = (DOCS / "algorithms.md").read_text()
    for name in REGISTRIES[group].names():
        assert f"`{name}`" in text, f"docs/algorithms.md does not describe {group} {name}"
    if group in ("strategy", "decoder"):
        described = set(re.findall(r"^### `(\w+)`", text, re.M))
        registered = (set(REGISTRIES["strategy"].names()) | set(REGISTRIES["decoder"].names())
                      | {p.stem for p in (ROOT / "configs" / "strategy").glob("*.yaml")})
        assert described - registered == set(), "docs/algorithms.md describes something the code lacks"


def test_strategy_presets_in_configs_are_all_described():
    text = (DOCS / "algorithms.md").read_text()
    for preset in (ROOT / "configs" / "strategy").glob("*.yaml"):
        assert f"### `{preset.stem}`" in text, preset.stem


def test_readme_links_every_doc_and_every_link_resolves():
    readme = (ROOT / "README.md").read_text()
    for doc in ("concepts", "algorithms", "examples", "faq", "future", "benchmarks"):
        assert f"docs/{doc}.md" in readme, f"README.md does not link docs/{doc}.md"
    for source in [ROOT / "README.md", *DOCS.glob("*.md")]:
        for link in re.findall(r"\]\(((?!http)[^)#]+)", source.read_text()):
            assert (source.parent / link).exists(), f"{source.name} links {link}, which does not exist"


def test_examples_show_every_command_with_its_real_output():
    text = (DOCS / "examples.md").read_text()
    for command in ("metalearn train", "metalearn eval", "metalearn predict", "metalearn export", "metalearn report",
                    "reproduce.py", "metalearn_cli.load"):
        assert command in text, command
    assert text.count("# exit code 0") >= 8 and "# exit code 2" in text
