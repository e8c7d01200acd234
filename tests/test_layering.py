"""Each package imports only the packages above it in the layer order (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

LAYERS = ["errors", "io", "models", "sampling", "weights", "data", "pipelines", "train", "eval",
          "cli"]
SRC = Path(__file__).parents[1] / "src" / "cineforge"


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cineforge."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("cineforge."))
    return found


@pytest.mark.parametrize("layer", LAYERS[1:])
def test_layer_imports_only_layers_above(layer):
    allowed = set(LAYERS[: LAYERS.index(layer) + 1])
    bad = {
        f"{p.relative_to(SRC)} imports cineforge.{m}"
        for p in (SRC / layer).rglob("*.py")
        for m in _imports(p) - allowed
    }
    assert not bad, sorted(bad)
