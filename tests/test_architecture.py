"""The import architecture holds: no import cycle inside ``nag_jax`` (between modules, and between
the subpackages/modules of every package), and the runtime never imports ``nag_jax.convert`` (the
PyTorch side; only the converter CLI's own modules may).

The graph is grimp's (every ``import`` statement, including imports inside functions, which are
dependencies all the same; ``if TYPE_CHECKING:`` imports are not). Cycles are found as strongly
connected components, and every one is reported with its members and the imports between them
(``grimp.ImportGraph.find_shortest_chains`` then shows the module-level chains of a part).
"""

from __future__ import annotations

import grimp
import pytest

PACKAGE = "nag_jax"
CONVERT = "nag_jax.convert"


@pytest.fixture(scope="module")
def graph():
    return grimp.build_graph(PACKAGE, exclude_type_checking_imports=True)


def strongly_connected(nodes, edges) -> list[list[str]]:
    """Components of more than one node (Tarjan, iterative), each sorted; sorted by first node."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []
    counter = 0
    for root in sorted(nodes):
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(edges.get(w, ())))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return sorted(out)


def test_strongly_connected_finds_cycles_and_ignores_chains():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"f"}, "f": {"e"}, "g": set()}
    assert strongly_connected(set(edges), edges) == [["a", "b", "c"], ["e", "f"]]
    assert strongly_connected({"a", "b"}, {"a": {"b"}}) == []


def module_edges(graph) -> dict[str, set[str]]:
    return {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}


def describe(component: list[str], edges: dict[str, set[str]]) -> str:
    """The component and its imports inside it, e.g. ``[a, b]: a -> b; b -> a``."""
    inside = [
        f"{a} -> {', '.join(sorted(edges.get(a, set()) & set(component)))}" for a in component
    ]
    return f"{component}: {'; '.join(inside)}"


def test_no_import_cycle_between_modules(graph):
    edges = module_edges(graph)
    cycles = strongly_connected(graph.modules, edges)
    assert not cycles, "import cycles between modules:\n" + "\n".join(
        describe(c, edges) for c in cycles
    )


def test_no_import_cycle_between_the_parts_of_any_package(graph):
    """For every package, its children (subpackages with everything below them, or modules)
    import each other without a cycle; e.g. nag_jax.training <-> nag_jax.evaluation."""
    edges = module_edges(graph)
    packages = sorted(m for m in graph.modules if graph.find_children(m))
    found = []
    for pkg in packages:
        children = graph.find_children(pkg)
        depth = pkg.count(".") + 1

        def part(module, pkg=pkg, depth=depth):
            if not module.startswith(pkg + "."):
                return None
            return ".".join(module.split(".")[: depth + 1])

        part_edges: dict[str, set[str]] = {}
        for importer, imported in edges.items():
            a = part(importer)
            for m in imported:
                b = part(m)
                if a and b and a != b:
                    part_edges.setdefault(a, set()).add(b)
        for comp in strongly_connected(children, part_edges):
            found.append(f"in {pkg}: {describe(comp, part_edges)}")
    assert not found, "import cycles between the parts of a package:\n" + "\n".join(found)


def test_only_the_converter_imports_nag_jax_convert(graph):
    outside = sorted(
        f"{importer} imports {imported}"
        for imported in graph.find_descendants(CONVERT) | {CONVERT}
        for importer in graph.find_modules_that_directly_import(imported)
        if not (importer == CONVERT or importer.startswith(CONVERT + "."))
    )
    assert not outside, (
        "the runtime imports the converter (use nag_jax.storage.weights):\n" + "\n".join(outside)
    )
