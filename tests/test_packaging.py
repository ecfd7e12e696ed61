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


def test_readme_is_a_release_users_page():
    """README <= 250 lines, its two commands as CI runs them, every local link resolves, and
    every file the blocks need has its download address."""
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    assert len(text.splitlines()) <= 250
    assert "pip install -r requirements.txt -r tests/requirements.txt && " in text
    assert 'python -m pytest -m "not slow"' in text
    assert "python -m nag_jax.main --config=configs/demo.py --workdir=runs/demo" in text
    for link in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):
        assert os.path.exists(os.path.join(ROOT, link)), link
    for name in (
        "SiT-XL-2-256.pt?rlkey=",
        "dl.fbaipublicfiles.com/DiT/models/DiT-XL-2-256x256.pt",
        "huggingface.co/stabilityai/sd-vae-ft-ema",
        "huggingface.co/stabilityai/sd-vae-ft-mse",
        "mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",
        "openaipublic.blob.core.windows.net/diffusion/jul-2021/ref_batches/imagenet/256/"
        "VIRTUAL_imagenet256_labeled.npz",
    ):
        assert name in text, name
    for platform in ("cpu", "cuda12", "tpu"):
        assert f"-c launch/constraints/{platform}.txt" in text
    docs = os.path.join(ROOT, "docs")
    for name in os.listdir(docs):
        with open(os.path.join(docs, name)) as f:
            for link in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", f.read()):
                assert os.path.exists(os.path.join(docs, link)), (name, link)


def test_license_is_apache_2(pyproject):
    with open(os.path.join(ROOT, "LICENSE")) as f:
        text = f.read()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text and len(text.splitlines()) > 190  # full text
    assert pyproject["project"]["license"] == "Apache-2.0"


def _pins(path: str) -> dict[str, str]:
    out = {}
    with open(path) as f:
        for line in f:
            line = line.split("#")[0].strip()
            if "==" in line and not line.startswith("-"):
                name, version = line.split("==")
                out[_name(name)] = version.strip()
    return out


def test_constraints_per_platform_pin_one_stack_and_the_tested_set():
    """launch/constraints/{cpu,cuda12,tpu}.txt: requirements.txt's exact pins in each, the same
    version of every shared package, jaxlib's own accelerator packages only where they belong,
    and torch's CPU wheel everywhere (no CUDA 13 stack beside JAX's CUDA 12)."""
    folder = os.path.join(ROOT, "launch", "constraints")
    files = {p: _pins(os.path.join(folder, f"{p}.txt")) for p in ("cpu", "cuda12", "tpu")}
    required = _pins(os.path.join(ROOT, "requirements.txt"))
    assert {"jax", "jaxlib", "flax", "orbax-checkpoint", "grain"} <= set(required)
    accel = re.compile(r"^(nvidia-|jax-cuda|libtpu|cuda-)")
    for platform, pins in files.items():
        for name, version in required.items():
            assert pins.get(name) == version, (platform, name, pins.get(name), version)
        assert pins["torch"] == "2.13.0+cpu", platform
        with open(os.path.join(folder, f"{platform}.txt")) as f:
            assert "--extra-index-url https://download.pytorch.org/whl/cpu" in f.read()
        found = {n for n in pins if accel.match(n)}
        if platform == "cpu":
            assert not found
        if platform == "tpu":
            assert found == {"libtpu"}
        if platform == "cuda12":
            assert {"jax-cuda12-plugin", "jax-cuda12-pjrt", "nvidia-cublas-cu12"} <= found
            # one CUDA stack: every NVIDIA wheel is a CUDA 12 one (CUDA 13's carry no -cu12)
            assert all(n.startswith("jax-cuda12") or n.endswith("-cu12") for n in found), found
    shared = set(files["cpu"]) & set(files["cuda12"]) & set(files["tpu"])
    for name in shared:
        assert files["cpu"][name] == files["cuda12"][name] == files["tpu"][name], name
