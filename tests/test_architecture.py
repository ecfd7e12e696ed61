"""The import architecture, as contracts over grimp's import graph (every ``import`` statement,
imports inside functions included: they are dependencies all the same; ``if TYPE_CHECKING:``
imports are not).

Layers, top to bottom (a module may import only from its own layer or the layers below it):

    main | convert      the entry point; the PyTorch converter, apart (nothing imports it)
    jobs                one module per mode; independent of each other
    library             training, evaluation, analysis, data, reporting, config
    math                sampling > guidance > diffusion > models (each a layer of its own)
    base                storage, parallel, utils, errors (services with no model knowledge)

``base`` sits below the math, not in the library: the sampler shards over ``parallel``'s mesh and
the models read their weights through ``storage`` (the one loader); what the math must not reach
is the config (completed once, where a job starts) and anything above it. Plus: nothing outside
``nag_jax.jobs`` imports it, and no package has an import cycle between its parts.

``KNOWN_VIOLATIONS`` lists the imports that break a contract today, each with its fix; a new
violation fails, and so does an entry that no longer occurs (remove it from the list).
"""

from __future__ import annotations

import copy

import grimp
import pytest

PACKAGE = "nag_jax"
L = grimp.Layer
LAYERS = (
    L("main", "convert", independent=True),
    "jobs",
    L("training", "evaluation", "analysis", "data", "reporting", "config", independent=False),
    "sampling",
    "guidance",
    "diffusion",
    "models",
    L("storage", "parallel", "utils", "errors", independent=False),
)

# "importer -> [via ->] imported" routes that break a contract now; each with the way out.
KNOWN_VIOLATIONS: set[str] = set()  # none today; a new violation fails


@pytest.fixture(scope="module")
def graph():
    return grimp.build_graph(PACKAGE, exclude_type_checking_imports=True)


def routes(dependencies) -> set[str]:
    """grimp's illegal dependencies as ``"head -> [middle ->] tail"`` strings."""
    out = set()
    for dep in dependencies:
        for route in dep.routes:
            for head in route.heads:
                for tail in route.tails:
                    out.add(" -> ".join([head, *route.middle, tail]))
    return out


def layer_violations(graph) -> set[str]:
    found = routes(graph.find_illegal_dependencies_for_layers(layers=LAYERS, containers={PACKAGE}))
    jobs = sorted(m.rpartition(".")[2] for m in graph.find_children(f"{PACKAGE}.jobs"))
    independent_jobs = [L(*jobs, independent=True)]
    found |= routes(
        graph.find_illegal_dependencies_for_layers(
            layers=independent_jobs, containers={f"{PACKAGE}.jobs"}
        )
    )
    return found


def test_every_top_level_module_has_a_layer(graph):
    named = set()
    for layer in LAYERS:
        named |= set(layer.module_tails) if isinstance(layer, grimp.Layer) else {layer}
    children = {m.rpartition(".")[2] for m in graph.find_children(PACKAGE)}
    assert children - named == set(), "give these a layer in LAYERS"


def test_layers_hold(graph):
    new = sorted(layer_violations(graph) - KNOWN_VIOLATIONS)
    assert not new, "imports against the layers (see the module docstring):\n" + "\n".join(new)


def test_known_violations_still_occur(graph):
    gone = sorted(KNOWN_VIOLATIONS - layer_violations(graph))
    assert not gone, "fixed: remove from KNOWN_VIOLATIONS:\n" + "\n".join(gone)


def test_the_contract_catches_an_upward_import(graph):
    """The contract is not vacuous: a models -> training import would be reported."""
    bad = copy.deepcopy(graph)
    bad.add_import(importer=f"{PACKAGE}.models.dit", imported=f"{PACKAGE}.training.loop")
    assert f"{PACKAGE}.models.dit -> {PACKAGE}.training.loop" in layer_violations(bad)
    bad.add_import(importer=f"{PACKAGE}.storage.paths", imported=f"{PACKAGE}.convert.common")
    assert f"{PACKAGE}.storage.paths -> {PACKAGE}.convert.common" in layer_violations(bad)


def test_nothing_outside_jobs_imports_jobs(graph):
    jobs = f"{PACKAGE}.jobs"
    outside = sorted(
        m
        for m in graph.find_downstream_modules(jobs, as_package=True)
        if m.split(".")[:2] != [PACKAGE, "jobs"]
    )
    assert not outside, f"these import {jobs} (move what they use into the library): {outside}"


def packages(graph) -> list[str]:
    return sorted(m for m in graph.modules if graph.find_children(m))


def cycles_between_parts(graph) -> dict[str, set]:
    """{package: imports whose removal breaks its cycles} for every package whose children (a
    subpackage counts with everything below it) import each other in a cycle."""
    found = {pkg: graph.nominate_cycle_breakers(pkg) for pkg in packages(graph)}
    return {pkg: breakers for pkg, breakers in found.items() if breakers}


def cycles_through_init(graph) -> list[str]:
    """The cycles the children-level check cannot see: ``pkg/__init__`` imports ``pkg.a`` and
    ``pkg.a`` (or something it imports) imports ``pkg`` back."""
    return sorted(
        f"{pkg} -> {child} -> ... -> {pkg}"
        for pkg in packages(graph)
        for child in graph.find_modules_directly_imported_by(pkg)
        if child.startswith(pkg + ".") and graph.chain_exists(importer=child, imported=pkg)
    )


def test_no_import_cycle(graph):
    assert not cycles_between_parts(graph), "import cycles (remove one import of each set)"
    assert not cycles_through_init(graph), "import cycles through a package __init__"


def test_cycle_checks_catch_a_cycle(graph):
    """Not vacuous: a cycle between two modules, and one through a package __init__."""
    bad = copy.deepcopy(graph)
    bad.add_import(importer=f"{PACKAGE}.diffusion.gaussian", imported=f"{PACKAGE}.diffusion.family")
    bad.add_import(importer=f"{PACKAGE}.diffusion.family", imported=f"{PACKAGE}.diffusion.gaussian")
    assert f"{PACKAGE}.diffusion" in cycles_between_parts(bad)
    bad = copy.deepcopy(graph)
    bad.add_import(importer=f"{PACKAGE}.models", imported=f"{PACKAGE}.models.dit")
    bad.add_import(importer=f"{PACKAGE}.models.dit", imported=f"{PACKAGE}.models")
    assert f"{PACKAGE}.models -> {PACKAGE}.models.dit -> ... -> {PACKAGE}.models" in (
        cycles_through_init(bad)
    )
