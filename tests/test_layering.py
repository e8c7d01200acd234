"""Each package imports only the packages above it in the layer order (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

LAYERS = ["errors", "io", "models", "sampling", "weights", "pipelines", "families", "data", "train",
          "eval", "api", "cli"]  # api: the module cineforge/api.py
SRC = Path(__file__).parents[1] / "src" / "cineforge"


def _imports(path: Path) -> set[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names += [a.name for a in node.names]
    return {n.split(".")[1] for n in names if n.startswith("cineforge.")}


@pytest.mark.parametrize("layer", LAYERS[1:])
def test_layer_imports_only_layers_above(layer):
    allowed = set(LAYERS[: LAYERS.index(layer) + 1])
    bad = {
        f"{p.relative_to(SRC)} imports cineforge.{m}"
        for p in (SRC / layer).rglob("*.py")
        for m in _imports(p) - allowed
    }
    assert not bad, sorted(bad)
