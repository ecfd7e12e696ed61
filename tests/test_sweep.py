"""Sweep mode: traced intervals == static intervals, resume point by point, argmin selection."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nag_jax.evaluation import evaluators, metrics, reference_stats
from nag_jax.evaluation.guidance_grid import points_of, select_best
from nag_jax.jobs import sweep
from nag_jax.sampling import build, generate
from tests.fixtures import tiny_config, tiny_model
from tests.helpers import init_params, rerandomize


@pytest.fixture(scope="module")
def model_params():
    c = tiny_config()
    model = tiny_model(c)
    return model, rerandomize(init_params(model), seed=3)


def _sample_config(cfg, nag, cfg_iv=(0.0, 1.0), nag_iv=(0.0, 1.0)):
    c = tiny_config()
    c.sample.update(sampler="sde", num_steps=6, cfg_scale=cfg, nag_scale=nag)
    c.sample.update(cfg_interval=cfg_iv, nag_interval=nag_iv)
    return c


def test_traced_intervals_give_the_static_intervals_samples(model_params):
    """One sampler with every branch on and traced scales + intervals reproduces the samplers
    compiled with each setting's static scales and intervals (incl. an unguided point)."""
    model, params = model_params
    keys = generate.per_image_keys(jax.random.key(2), jnp.arange(4))
    y = jnp.arange(4) % 4
    traced = jax.jit(build.build_sampler(_sample_config(2.0, 1.0), model))
    for cfg, nag, civ, niv in [
        (1.5, 1.0, (0.3, 0.8), (0.0, 0.5)),
        (2.0, 0.0, (0.5, 1.0), (0.0, 1.0)),
        (1.0, 2.0, (0.0, 1.0), (0.2, 0.6)),
        (1.0, 0.0, (0.0, 1.0), (0.0, 1.0)),
    ]:
        static = jax.jit(build.build_sampler(_sample_config(cfg, nag, civ, niv), model))
        want = np.asarray(static(params, keys, y))
        got = traced(params, keys, y, jnp.array([cfg, nag]), jnp.array([civ, niv]))
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
    assert traced._cache_size() == 1
    # the intervals matter: the same scales over the full range give other samples
    full = traced(params, keys, y, jnp.array([1.5, 1.0]), jnp.array([[0.0, 1.0], [0.0, 1.0]]))
    part = traced(params, keys, y, jnp.array([1.5, 1.0]), jnp.array([[0.3, 0.8], [0.0, 0.5]]))
    assert np.abs(np.asarray(full) - np.asarray(part)).max() > 1e-3


def _toy_extractor():
    def fn(x):
        x = x.astype(jnp.float32) / 255.0
        pool = jnp.concatenate(
            [x.mean((1, 2)), x.std((1, 2)), x[:, ::4, ::4].reshape(len(x), -1)], -1
        )
        return {"pool": pool}

    return metrics.FeatureExtractor("toy-sweep", fn)


def _reference(ex):
    imgs = np.random.default_rng(0).integers(0, 256, (64, 8, 8, 3), dtype=np.uint8)
    return reference_stats.ReferenceStats.from_features(metrics.extract_features(ex, imgs))


def _sweep_config():
    c = tiny_config()
    c.mode = "sweep"
    c.sample.update(sampler="sde", num_steps=3)
    c.eval.update(batch_size=8, feature_batch_size=16, pr_block_size=64, is_splits=2)
    c.sweep.update(
        cfg_scales=(1.0, 2.0),
        nag_scales=(0.0, 1.0),
        val_seeds=(5,),
        report_seeds=(6,),
        num_images=8,
        metric="fid",
    )
    return c


def test_sweep_resumes_point_by_point_and_gives_the_same_table(tmp_path, model_params, monkeypatch):
    model, params = model_params
    ex = _toy_extractor()
    ref = _reference(ex)
    kw = dict(model=model, params=params, extractor=ex, reference=ref)
    calls = []
    score = evaluators.score_images
    monkeypatch.setattr(evaluators, "score_images", lambda *a: calls.append(1) or score(*a))

    def kill_after(k):
        def on_point(done):
            if done == k:
                raise KeyboardInterrupt(f"killed after {k} points")

        return on_point

    work = str(tmp_path / "resumed")
    with pytest.raises(KeyboardInterrupt):
        sweep.run(_sweep_config(), work, on_point=kill_after(2), **kw)
    assert len(calls) == 2 and len(os.listdir(os.path.join(work, "sweep", "points"))) == 2
    calls.clear()
    resumed = sweep.run(_sweep_config(), work, **kw)
    held = len(resumed["held_out"])
    assert len(calls) == 2 + held  # the 2 points not done, then the held-out rows
    calls.clear()
    again = sweep.run(_sweep_config(), work, **kw)
    assert calls == [] and again["points"] == resumed["points"]
    fresh = sweep.run(_sweep_config(), str(tmp_path / "fresh"), **kw)
    strip = lambda r: {k: v for k, v in r.items() if k not in ("sample_seconds", "images_per_s")}
    assert [strip(r) for r in fresh["points"]] == [strip(r) for r in resumed["points"]]
    assert fresh["best"] == resumed["best"]
    assert len({r["mean"]["fid"] for r in fresh["points"]}) == 4  # the points differ
    with open(os.path.join(work, "sweep", "table.md")) as f:
        table = f.read()
    assert resumed["best"]["name"] in table
    assert os.path.getsize(os.path.join(work, "sweep", "curves.png")) > 1000
    with open(os.path.join(work, "sweep", "results.json")) as f:
        assert json.load(f)["best"] == resumed["best"]


def test_sweep_picks_the_argmin_of_a_synthetic_metric():
    """A bowl with its minimum at (s_cfg, w_nag) = (1.5, 0.5), one NaN point and a tie."""
    c = _sweep_config()
    c.sweep.update(cfg_scales=(1.0, 1.25, 1.5, 2.0), nag_scales=(0.0, 0.5, 1.0))
    points = points_of(c.sweep)
    assert len(points) == 12
    rows = []
    for p in points:
        value = (p.cfg_scale - 1.5) ** 2 + (p.nag_scale - 0.5) ** 2
        if (p.cfg_scale, p.nag_scale) == (2.0, 1.0):
            value = float("nan")
        rows.append(dict(name=p.name, mean={"fid": value}))
    best = select_best(rows, "fid")
    assert best["name"] == "cfg=1.5 nag=0.5"
    tie = [dict(name="a", mean={"fid": 1.0}), dict(name="b", mean={"fid": 1.0})]
    assert select_best(tie, "fid")["name"] == "a"
    with pytest.raises(ValueError, match="sweep.metric"):
        select_best(rows, "class_accuracy")


def test_grid_drops_intervals_of_off_terms_and_seeds_must_be_disjoint(tmp_path):
    c = _sweep_config()
    c.sweep.update(cfg_scales=(1.0,), nag_scales=(0.0, 1.0), nag_intervals=((0, 1), (0, 0.5)))
    names = [p.name for p in points_of(c.sweep)]
    assert names == ["cfg=1 nag=0", "cfg=1 nag=1", "cfg=1 nag=1 nag_on=[0,0.5]"]
    c.sweep.report_seeds = (5,)
    with pytest.raises(ValueError, match="overlap"):
        sweep.run(c, str(tmp_path))


def test_fine_grained_table_is_six_rows_with_nag_only_on_the_nag_fine_tune():
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), "..", "configs", "finetune_fine_grained.py")
    spec = importlib.util.spec_from_file_location("_fg", path)
    fg = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fg)
    for arg in ("food101,table", "shapes,table"):
        c = fg.get_config(arg)
        points = points_of(c.sweep)
        assert [p.name for p in points] == [
            "FT", "FT + NAG", "FT w/ CFG", "FT w/ CFG + NAG", "FT w/ DoG", "FT w/ DoG + NAG",
        ]  # fmt: skip
        assert [p.nag_scale != 0 for p in points] == [False, True] * 3
        assert [p.cfg_scale != 1 for p in points] == [False, False, True, True, False, False]
        assert [p.dog_scale != 1 for p in points] == [False] * 4 + [True] * 2
        assert c.mode == "sweep" and not c.sweep.val_seeds
    assert fg.get_config("shapes,table").model.domain_weights.endswith("assets/demo_base")
    c = fg.get_config("food101,table")
    assert c.eval.num_images == c.sweep.num_images == 10_000
    nonag = {p.weights for p in points_of(c.sweep) if p.nag_scale == 0}
    assert nonag == {os.path.join("runs", "ft_food101_nonag", "checkpoints")}
