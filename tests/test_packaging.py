"""pyproject.toml stays in step with the code: its explicit package list names every subpackage
(plus configs/ as nag_jax.configs), the console scripts point at callables, every pinned runtime
requirement is a dependency of the package or of an extra, and a missing optional dependency is
one error naming its extra."""

from __future__ import annotations

import importlib
import os
import re

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def pyproject():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def _name(requirement: str) -> str:
    name = re.split(r"[<>=!~\[; ]", requirement.strip(), maxsplit=1)[0]
    return name.lower().replace("_", "-")


def test_package_list_names_every_subpackage_and_the_configs(pyproject):
    found = sorted(
        os.path.relpath(root, ROOT).replace(os.sep, ".")
        for root, _, files in os.walk(os.path.join(ROOT, "nag_jax"))
        if "__init__.py" in files
    )
    setuptools = pyproject["tool"]["setuptools"]
    assert sorted(setuptools["packages"]) == sorted([*found, "nag_jax.configs"])
    assert setuptools["package-dir"] == {"nag_jax.configs": "configs"}
    assert "assets/**/*" in setuptools["package-data"]["nag_jax"]  # the demo's base model


def test_console_scripts_point_at_callables(pyproject):
    scripts = pyproject["project"]["scripts"]
    assert set(scripts) == {"nag-jax", "nag-convert", "nag-jax-fetch"}
    for target in scripts.values():
        module, attr = target.split(":")
        assert callable(getattr(importlib.import_module(module), attr))


def test_every_runtime_requirement_is_a_dependency_or_an_extra(pyproject):
    project = pyproject["project"]
    declared = {_name(r) for r in project["dependencies"]}
    for reqs in project["optional-dependencies"].values():
        declared |= {_name(r) for r in reqs}
    with open(os.path.join(ROOT, "requirements.txt")) as f:
        pinned = {_name(line) for line in f if line.strip() and not line.startswith("#")}
    assert pinned - {"jaxlib"} <= declared, pinned - declared  # jaxlib comes with jax
    extras = project["optional-dependencies"]
    assert extras["cuda12"] == ["jax[cuda12]>=0.10.2"] and extras["tpu"] == ["jax[tpu]>=0.10.2"]
    assert "torch" in {_name(r) for r in extras["convert"]}
    core = {_name(r) for r in project["dependencies"]}
    assert not core & {"torch", "tensorflow", "tensorflow-cpu", "jaxlib"}  # never forced


def test_missing_optional_dependency_names_its_extra(monkeypatch, tmp_path):
    import sys

    from nag_jax.errors import MissingDependencyError, UserError, require
    from nag_jax.training.metrics import create_writer
    from nag_jax.utils import import_tensorflow

    monkeypatch.setitem(sys.modules, "tensorflow", None)
    with pytest.raises(MissingDependencyError) as info:
        import_tensorflow("TensorBoard event files")
    assert isinstance(info.value, UserError) and isinstance(info.value, ImportError)
    assert str(info.value) == (
        "TensorBoard event files needs tensorflow, which is not installed: "
        "pip install 'nag_jax[data]'"
    )
    assert require("json", what="x", extra="data").dumps([1]) == "[1]"
    # training goes on without TensorFlow: TensorBoard off (one warning), nothing written
    writer = create_writer(str(tmp_path), tensorboard=True)
    writer.write_scalars(1, {"loss": 1.0})
    writer.close()
    assert os.listdir(tmp_path) == []
