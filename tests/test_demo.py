"""The built-in demo: the shipped base model, the NAG fine-tune, the table's statistics, the study's
seed discipline, and one tiny end-to-end run of ``nag_jax.jobs.demo.run``."""

import importlib.util
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nag_jax.data.synthetic import ShapesDataset
from nag_jax.evaluation.guidance_rows import Row, RowSampler
from nag_jax.jobs import demo
from nag_jax.reporting import figures, stats
from nag_jax.sampling import build

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(name="demo.py"):
    spec = importlib.util.spec_from_file_location(name[:-3], os.path.join(ROOT, "configs", name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def test_summarize_paired_differences_by_hand():
    metrics = ("class_accuracy", "proxy_fd", "precision", "recall")
    results = {
        "a": {"per_seed": {m: [1.0, 2.0, 3.0] for m in metrics}},
        "b": {"per_seed": {m: [0.5, 1.0, 2.5] for m in metrics}},
    }
    s = stats.summarize_rows(results, [("a", "b"), ("a", "missing")], metrics)
    # Row a: mean 2, sample sd 1, SE 1/sqrt(3).
    assert s["rows"]["a"]["proxy_fd"]["mean"] == pytest.approx(2.0)
    assert s["rows"]["a"]["proxy_fd"]["se"] == pytest.approx(1 / np.sqrt(3))
    # Paired differences 0.5, 1, 0.5: mean 2/3, sd sqrt(1/12), SE sqrt(1/12)/sqrt(3) = 1/6.
    d = s["differences"]["a - b"]["class_accuracy"]
    assert d["mean"] == pytest.approx(2 / 3)
    assert d["se"] == pytest.approx(1 / 6)
    assert d["t"] == pytest.approx(4.0) and d["dof"] == 2
    assert list(s["differences"]) == ["a - b"]  # comparisons naming absent rows are skipped


def test_row_from_config_forms():
    assert Row.from_config(("NAG", 1, 2)) == Row("NAG", 1.0, 2.0)
    r = Row.from_config({"name": "x", "nag_scale": 1.0, "nag_interval": [0, 0.5], "num_steps": 10})
    assert r.nag_interval == (0.0, 0.5) and r.num_steps == 10 and r.cfg_scale == 1.0


def test_demo_rows_are_the_committed_validation_choice():
    # The demo's scales must be the study's choice on its validation seeds, committed in
    # benchmarks/results/demo_study/validation.json before the report seeds were sampled.
    with open(os.path.join(ROOT, "benchmarks", "results", "demo_study", "validation.json")) as f:
        v = json.load(f)
    study = _config("demo_study.py").study
    assert v["val_seeds"] == list(study.val_seeds)
    assert not set(v["val_seeds"]) & set(_config().demo.seeds)
    choice = v["choice"]
    s, w, iv = choice["cfg_scale"], choice["nag_scale"], tuple(choice["nag_interval"])
    js, jw = choice["cfg_nag"]
    want = [
        Row("none"),
        Row("CFG", cfg_scale=s),
        Row("NAG", nag_scale=w, nag_interval=iv),
        Row("CFG+NAG", cfg_scale=js, nag_scale=jw, nag_interval=iv),
        Row("CFG+NAG same s", cfg_scale=s, nag_scale=jw, nag_interval=iv),
    ]
    assert [Row.from_config(r) for r in _config().demo.settings] == want


def test_study_rejects_overlapping_seeds(tmp_path):
    from nag_jax.jobs import study as demo_study

    c = _config("demo_study.py")
    c.study.val_seeds = (0, 5)
    with pytest.raises(ValueError, match="overlap"):
        demo_study.run(c, str(tmp_path))


def test_study_config_holds_validation_out_of_the_report():
    c = _config("demo_study.py")
    assert not set(c.study.val_seeds) & set(c.study.report_seeds)
    assert tuple(c.study.report_seeds) == tuple(c.demo.seeds)  # the demo reports held-out seeds


def test_shipped_base_model_is_a_release_like_checkpoint():
    """No null noise token (like the releases), the demo's architecture, loadable by the loader."""
    from nag_jax.storage.weights import load_params

    c = _config()
    assert os.path.isdir(c.model.weights), c.model.weights
    params, meta = load_params(c.model.weights)
    assert meta["model"] == c.model.name and meta["hidden_size"] == c.model.hidden_size
    assert "null_noise_token" not in params
    model = build.build_model(c.model)
    x = jnp.zeros((1, 16, 16, 3))
    template = jax.eval_shape(
        lambda: model.init(jax.random.key(0), x, jnp.ones((1,)), jnp.zeros((1,), jnp.int32))
    )["params"]
    template = dict(template)
    template.pop("null_noise_token")
    shapes = jax.tree.map(lambda a: tuple(a.shape), params)
    assert shapes == jax.tree.map(lambda a: tuple(a.shape), template)


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory):
    """``demo.run`` with a 3-step fine-tune of the shipped base and 2 seeds x 32 images."""
    workdir = str(tmp_path_factory.mktemp("demo"))
    c = _config()
    c.train.num_steps = 3
    c.train.checkpoint_every = 3
    c.train.log_every = 1
    c.demo.images_per_seed = 32
    c.demo.seeds = (0, 1)
    c.demo.num_real = 64
    c.demo.grid_images_per_class = 2
    metrics = demo.run(c, workdir)
    return c, workdir, metrics


def test_demo_writes_table_grids_and_metrics(tiny_demo):
    c, workdir, metrics = tiny_demo
    names = [Row.from_config(r).name for r in c.demo.settings]
    names += ["none + unsharp", "none + noise"]  # the controls (config.demo.controls)
    for name in names:
        assert os.path.exists(os.path.join(workdir, figures.grid_file(name)))
    assert os.path.exists(os.path.join(workdir, "grid_CFG_NAG.png"))  # the plain file names
    assert os.path.exists(os.path.join(workdir, "comparison.png"))
    with open(os.path.join(workdir, "metrics.json")) as f:
        saved = json.load(f)
    assert saved["training"]["steps"] == 3 and saved["training"]["weights"]
    for name in names:
        per = saved["results"][name]["per_seed"]
        assert len(per["proxy_fd"]) == 2 and all(0 <= a <= 1 for a in per["class_accuracy"])
    with open(os.path.join(workdir, "table.md")) as f:
        table = f.read()
    assert "| NAG - none |" in table and "+-" in table
    assert "| none + unsharp - none |" in table and "| CFG+NAG same s - CFG |" in table
    # the controls: the unguided images, sharpened (or noised) to NAG's high-frequency energy on
    # the validation seed, scored on the report seeds like the guidance rows
    assert set(saved["controls"]) == {"none + unsharp", "none + noise"}
    assert all(v >= 0 for v in saved["controls"].values())
    assert len(saved["results"]["none + noise"]["per_seed"]["proxy_fd"]) == 2
    # TensorBoard: the fine-tune's curves and the settings' results, at the last step.
    from tests.helpers import read_tensorboard

    tags = read_tensorboard(workdir)
    mean_fd = np.mean(saved["results"]["NAG"]["per_seed"]["proxy_fd"])
    assert tags[("demo/NAG/proxy_fd", 3)] == pytest.approx(mean_fd, rel=1e-6)
    assert ("demo/comparison", 3) in tags and ("loss", 3) in tags and ("lr", 3) in tags


def test_demo_model_depends_on_class_noise_level_and_null_token(tiny_demo):
    """The fine-tuned demo model: conditional, class-unconditional and noise-unconditional
    outputs differ, and the output changes with t (a fresh model outputs exactly zero)."""
    from nag_jax.storage.weights import load_params

    c, workdir, _ = tiny_demo
    params = jax.tree.map(jnp.asarray, load_params(os.path.join(workdir, "checkpoints"))[0])
    model = build.build_model(c.model)
    real = ShapesDataset(16, 16).render_batch(np.arange(2**40, 2**40 + 32))
    x1, y = jnp.asarray(real["image"]), jnp.asarray(real["label"])
    x0 = jax.random.normal(jax.random.key(0), x1.shape)
    t = jnp.full((32,), 0.5)
    xt = t[:, None, None, None] * x1 + (1 - t[:, None, None, None]) * x0  # linear path

    def f(tt, drop_class=False, drop_noise=False):
        n = xt.shape[0]
        return model.apply(
            {"params": params},
            xt,
            tt,
            y,
            drop_class=jnp.full((n,), drop_class),
            drop_noise=jnp.full((n,), drop_noise),
        )

    c_out = f(t)
    scale = float(jnp.mean(jnp.abs(c_out)))
    assert scale > 0.1
    rel = lambda o: float(jnp.mean(jnp.abs(o - c_out))) / scale
    assert rel(f(t, drop_class=True)) > 0.02  # class-unconditional differs
    assert rel(f(jnp.full((32,), 0.9))) > 0.02  # depends on t
    assert rel(f(t, drop_noise=True)) > 0.002  # noise-unconditional differs


def test_row_sampler_compiles_per_batch_size_and_is_deterministic(tiny_demo):
    """One compiled sampler per (branches, interval, steps, batch): a second batch size gets its
    own program, and the same seed gives the same images (image i is a function of (seed, i))."""
    c, _, _ = tiny_demo
    model = build.build_model(c.model)
    params = model.init(
        jax.random.key(0), jnp.zeros((1, 16, 16, 3)), jnp.ones((1,)), jnp.zeros((1,), jnp.int32)
    )["params"]
    params = jax.tree.map(lambda a: a + 0.01, params)  # non-zero output
    sampler = RowSampler(c, model)
    row = Row("NAG", nag_scale=1.0)
    a16, y16, _ = sampler(row, params, 3, 16)
    a32, y32, _ = sampler(row, params, 3, 32)
    b16, _, _ = sampler(row, params, 3, 16)
    assert a16.shape == (16, 16, 16, 3) and a32.shape == (32, 16, 16, 3)
    np.testing.assert_array_equal(a16, b16)
    np.testing.assert_array_equal(y32, np.arange(32) % 16)
    np.testing.assert_allclose(a32[:16], a16, atol=1e-5)
    assert np.abs(a16 - sampler(row, params, 4, 16)[0]).max() > 0.1  # another seed differs
