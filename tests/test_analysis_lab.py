"""The lab entry point end to end (tiny settings) and its helpers."""

import importlib.util
import json
import os

import numpy as np
import pytest

from nag_jax.analysis import lab
from nag_jax.analysis.lab import common

_CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs")


def _load_config(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(_CONFIGS, f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config()


def test_subsample_steps_keeps_both_ends_and_is_sorted():
    idx = common.subsample_steps(51, 11)
    assert idx[0] == 0 and idx[-1] == 50 and len(idx) == 11
    assert np.all(np.diff(idx) > 0)
    np.testing.assert_array_equal(common.subsample_steps(5, 26), np.arange(5))


@pytest.mark.parametrize("name", ["lab_gmm", "lab_shapes"])
def test_lab_configs_fill_the_schema(name):
    c = _load_config(name)
    assert c.mode == "lab"
    for k in ("seed", "model", "process", "objective", "data", "optim", "train", "sample"):
        assert k in c, k
    assert c.lab.kind in ("gmm", "shapes")
    names = [r.name for r in c.lab.rows]
    assert names == ["none", "CFG", "NAG", "CFG+NAG", "cls-NAG"]


@pytest.mark.slow
def test_gmm_lab_runs_end_to_end(tmp_path):
    c = _load_config("lab_gmm")
    c.lab.dim = 4
    c.lab.hidden = 32
    c.lab.depth = 1
    c.train.num_steps = 50
    c.lab.estimator.num_steps = 50
    c.lab.estimator.hidden = 32
    c.lab.num_samples = 64
    c.lab.num_seeds = 2
    c.lab.step_counts = (4,)
    c.lab.samplers = ("ode",)
    c.lab.grid_size = 40
    c.lab.sweep.enabled = False
    res = lab.run(c, str(tmp_path))
    assert (tmp_path / "report.md").exists() and (tmp_path / "delta_ode.png").exists()
    rows = {r["row"] for r in res["runs"]}
    assert rows == {"exact velocity", "none", "CFG", "NAG", "CFG+NAG", "cls-NAG"}
    assert all(all(r["finite"]) for r in res["runs"])
    json.loads((tmp_path / "results.json").read_text())


def test_lab_process_comes_from_builders_for_the_mlp_name_and_refuses_dit():
    c = _load_config("lab_gmm")  # model.name "SiT-MLP": no registry name, SiT-style
    c.process.path, c.process.prediction = "gvp", "score"
    tr = common.build_transport(c)
    assert (tr.path, tr.prediction) == ("gvp", "score")
    # the GVP path: alpha = sin(pi t / 2), sigma = cos(pi t / 2)
    a, s = (float(v) for v in tr.alpha_sigma(0.5)[:2])
    assert a == pytest.approx(np.sin(np.pi / 4)) and s == pytest.approx(np.cos(np.pi / 4))
    c.model.name = "DiT-S/2"
    with pytest.raises(ValueError, match="SiT-style"):
        common.build_transport(c)
