"""CI executes every notebook in notebooks/ top to bottom (nbclient), so they cannot rot.

Each notebook has a cell tagged ``parameters`` (``SMALL = False`` ...); the test inserts a cell
after it setting ``SMALL = True`` (papermill's convention), which makes the run small. The kernel
is this interpreter (a kernelspec written to a temporary JUPYTER_PATH, so a user's own "python3"
kernel can never be picked up). A cell error fails the test with the cell's traceback.
"""

from __future__ import annotations

import glob
import json
import os
import sys

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "notebooks", "*.ipynb")))
KERNEL = "nag-jax-tests"
TIMEOUT = 600  # per cell; the whole small run of each notebook is well under that


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
    """A kernelspec for this interpreter and the environment the kernels inherit."""
    jupyter_path = tmp_path_factory.mktemp("jupyter")
    spec_dir = jupyter_path / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "nag_jax tests",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    env = {
        "JUPYTER_PATH": str(jupyter_path),
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
        "MPLBACKEND": "Agg",
        "JAX_COMPILATION_CACHE_DIR": os.path.join(ROOT, "tests", ".jax_cache"),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    return env


def inject_small(nb) -> None:
    """Inserts ``SMALL = True`` after the cell tagged ``parameters`` (which must exist)."""
    idx = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(idx) == 1, "each notebook needs exactly one cell tagged 'parameters'"
    assert "SMALL = False" in nb.cells[idx[0]].source, "the parameters cell defines SMALL = False"
    cell = nbformat.v4.new_code_cell("SMALL = True  # injected by tests/test_notebooks.py")
    cell.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(idx[0] + 1, cell)


def test_every_notebook_has_a_colab_badge_and_a_parameters_cell():
    assert {os.path.basename(p) for p in NOTEBOOKS} >= {
        "demo.ipynb",
        "nag_guidance_sliders.ipynb",
        "noise_shift_lab.ipynb",
    }
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        name = os.path.basename(path)
        assert f"/blob/main/notebooks/{name})" in nb.cells[0].source, name
        inject_small(nb)
        outputs = sum(len(c.get("outputs", [])) for c in nb.cells if c.cell_type == "code")
        assert outputs > 0, f"{name}: saved outputs are committed"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs_top_to_bottom(path, kernel_env, monkeypatch, tmp_path):
    for k, v in kernel_env.items():
        monkeypatch.setenv(k, v)
    nb = nbformat.read(path, as_version=4)
    inject_small(nb)
    client = nbclient.NotebookClient(
        nb,
        kernel_name=KERNEL,
        timeout=TIMEOUT,
        resources={"metadata": {"path": os.path.dirname(path)}},
    )
    client.execute()  # raises CellExecutionError naming the failing cell
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
