"""No import cycles between the modules of the core and of the front ends (issue 12: the
Label Studio backend's ``model`` <-> ``training``, the core's ``checkpoint`` <-> ``modeling``).

Every import counts, also those inside functions: a deferred import hides a cycle from
Python but not from a reader."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports (anywhere in its source)."""
    files = {}
    for f in (root / package).rglob("*.py"):
        parts = f.relative_to(root).with_suffix("").parts
        is_init = parts[-1] == "__init__"
        mod = ".".join(parts[:-1] if is_init else parts)
        files[mod] = (f, mod if is_init else mod.rsplit(".", 1)[0])
    graph = {}
    for mod, (f, here) in files.items():
        deps = set()
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here.split(".")[: len(here.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                deps.add(target)
                deps.update(f"{target}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
        graph[mod] = {d for d in deps if d in files and d != mod}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Pairs of modules that reach each other."""

    def reach(start):
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    return sorted({tuple(sorted((a, b))) for a in graph for b in graph[a] if a in reach(b)})


def test_the_cycle_finder_finds_deferred_and_indirect_cycles(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "model.py").write_text("from .training import FineTuner\n")
    (pkg / "training.py").write_text("def f():\n    from .helpers import x\n")
    (pkg / "helpers.py").write_text("import pkg.model\n")
    (pkg / "alone.py").write_text("from . import helpers\n")
    found = cycles(import_graph(tmp_path, "pkg"))
    assert ("pkg.model", "pkg.training") in found and ("pkg.helpers", "pkg.model") in found
    assert not any("pkg.alone" in pair for pair in found)


@pytest.mark.parametrize("package", ["pasam_plugins", "label_studio_backend", "napari_pasam"])
def test_no_import_cycles(package):
    graph = import_graph(ROOT, package)
    assert len(graph) > 3
    assert cycles(graph) == []


def test_the_fine_tuner_does_not_know_the_backend():
    graph = import_graph(ROOT, "label_studio_backend")
    assert "label_studio_backend.training" in graph["label_studio_backend.model"]
    assert "label_studio_backend.model" not in graph["label_studio_backend.training"]
