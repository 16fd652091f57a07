"""The house's structure: no import circle, and a refactor that changes no fingerprint.

The layer contracts themselves are checked by `lint-imports` (scripts/test.sh, pyproject.toml
[tool.importlinter]); here, the import graph as a whole has no cycle, and the fingerprints
equal those recorded in tests/data/fingerprints.json (the layers commit computed exactly those
of the commit before it, 540d0a9), so a refactor reuses every version made before it."""
import json
import os
from pathlib import Path

import pytest

from tests.fingerprints import fingerprints

ROOT = Path(__file__).resolve().parent.parent


def import_cycles(graph) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for other in graph.find_modules_directly_imported_by(module):
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in on_stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == module:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return cycles


def test_the_import_graph_has_no_cycle():
    grimp = pytest.importorskip("grimp")  # import-linter's graph builder (the test extra)
    graph = grimp.build_graph("vico_pipeline", "stages", include_external_packages=False)
    assert len(graph.modules) > 50  # the whole project was read
    assert import_cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    class Graph:  # a -> b -> c -> a, and d alone
        modules = {"a", "b", "c", "d"}
        edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}

        def find_modules_directly_imported_by(self, module):
            return self.edges[module]

    assert import_cycles(Graph()) == [["a", "b", "c"]]


def test_fingerprints_change_only_on_purpose(monkeypatch):
    monkeypatch.chdir(ROOT)  # the cases name configs/ by relative path
    for name in [n for n in os.environ if n.startswith("VICO_")]:
        monkeypatch.delenv(name)
    expected = json.loads((ROOT / "tests" / "data" / "fingerprints.json").read_text())
    assert fingerprints() == expected


if __name__ == "__main__":  # python -m tests.test_layers: the graph's size and its cycles
    import grimp

    graph = grimp.build_graph("vico_pipeline", "stages", include_external_packages=False)
    imports = sum(len(graph.find_modules_directly_imported_by(m)) for m in graph.modules)
    cycles = import_cycles(graph)
    print(f"{len(graph.modules)} modules, {imports} imports between them, {len(cycles)} cycles")
    for cycle in cycles:
        print("cycle:", " ".join(cycle))
