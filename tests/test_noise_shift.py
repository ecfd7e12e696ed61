"""mode=noise_shift on a tiny model and tiny data (CPU), and its building blocks: forward samples
of either family, classifier-based NAG as a sampler option (SiT velocity and DiT epsilon), the
estimator on disk, the KDE.

Time conventions: SiT float t (0 = noise, 1 = data); DiT original step (0 = least noise);
reported levels are noise levels (1 = pure noise).
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nag_jax.analysis import sampler_shift
from nag_jax.analysis import shift as S
from nag_jax.config import schema
from nag_jax.diffusion.gaussian import create_diffusion
from nag_jax.diffusion.transport import Transport
from nag_jax.guidance.classifier import classifier_nag_prediction
from nag_jax.jobs import noise_shift
from nag_jax.models.noise_estimator import (
    Estimator,
    NoiseLevelEstimator,
    load_estimator,
    save_estimator,
)
from nag_jax.sampling import build
from tests.fixtures import tiny_config


def test_dit_forward_at_level_is_q_sample_at_the_original_step():
    full = create_diffusion("", 1000, True)
    respaced = create_diffusion("10", 1000, True)
    x1 = jnp.asarray(np.random.RandomState(0).randn(3, 4, 4, 2), jnp.float32)
    x0 = jnp.asarray(np.random.RandomState(1).randn(3, 4, 4, 2), jnp.float32)
    steps = np.array([0, 499, 999])
    levels = (steps + 1) / 1000.0
    expected = full.q_sample(x1, jnp.asarray(steps), x0)  # un-respaced: index == original step
    for process in (full, respaced):  # any respacing: the base schedule is used
        got = S.forward_at_level(process, x0, x1, jnp.asarray(levels))
        np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-5, atol=1e-5)
    lam = S.sample_levels(full, jax.random.key(0), 4096)
    assert set(np.round(np.asarray(lam) * 1000).astype(int)) <= set(range(1, 1001))
    assert abs(float(lam.mean()) - 0.5005) < 0.02


def test_kde_integrates_to_one_and_peaks_at_the_data():
    grid = np.linspace(0, 1, 401)
    d = S.kde(np.array([0.3, 0.3, 0.31, 0.29]), grid)
    assert abs(np.trapezoid(d, grid) - 1.0) < 1e-3
    assert abs(grid[np.argmax(d)] - 0.3) < 0.01


@pytest.fixture(scope="module")
def estimator():
    module = NoiseLevelEstimator(num_bins=10, hidden=16, depth=1, conv=True, conv_layers=1)
    params = module.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))["params"]
    return Estimator(module, params)


def _fd_grad(est, x, level, h=1e-2):
    """Central finite differences of sum log g(level | x) (independent of jax.grad), all
    perturbations in one batched call."""
    x = np.asarray(x, np.float32)
    d = x.size
    e = (np.eye(d, dtype=np.float32) * h).reshape((d,) + x.shape)
    f = jax.jit(jax.vmap(lambda z: est.log_prob_level(z, level).sum()))
    diff = np.asarray(f(jnp.asarray(x + e)), np.float64) - np.asarray(f(jnp.asarray(x - e)))
    return (diff / (2 * h)).reshape(x.shape)


def test_classifier_nag_dit_epsilon_correction(estimator):
    # DiT: eps = -sqrt(1 - abar) score, so the score gain w grad log g moves eps by
    # -w sqrt(1 - abar_step) grad; variance channels unchanged.
    diffusion = create_diffusion("10", 1000, True)
    x = jnp.asarray(np.random.RandomState(2).randn(2, 8, 8, 3) * 0.5, jnp.float32)
    raw = jnp.asarray(np.random.RandomState(3).randn(2, 8, 8, 6), jnp.float32)
    step, w = 599.0, 2.0
    wrapped = classifier_nag_prediction(
        lambda x, t, y: raw, estimator, w, transport=diffusion, interval=(0.0, 1.0)
    )
    out = np.asarray(wrapped(x, jnp.float32(step), None))
    abar = diffusion.base_alphas_cumprod[int(step)]
    grad = _fd_grad(estimator, x, 0.6)
    np.testing.assert_allclose(
        out[..., :3], np.asarray(raw[..., :3]) - w * np.sqrt(1 - abar) * grad, atol=2e-3
    )
    np.testing.assert_array_equal(out[..., 3:], np.asarray(raw[..., 3:]))
    # outside the interval: the raw prediction
    off = classifier_nag_prediction(
        lambda x, t, y: raw, estimator, w, transport=diffusion, interval=(0.0, 0.5)
    )
    np.testing.assert_array_equal(np.asarray(off(x, jnp.float32(step), None)), np.asarray(raw))


def test_sample_nag_mode_classifier_through_builders(estimator, tmp_path):
    path = str(tmp_path / "est")
    save_estimator(path, estimator)
    loaded = load_estimator(path)
    x = jnp.asarray(np.random.RandomState(4).randn(2, 8, 8, 3), jnp.float32)
    np.testing.assert_allclose(
        np.asarray(loaded.log_posterior(x)), np.asarray(estimator.log_posterior(x)), atol=1e-6
    )
    c = tiny_config()
    c.sample.update(nag_mode="classifier", nag_scale=1.5, nag_interval=(0.0, 0.6), estimator=path)
    schema.validate(c)
    model = build.build_model(c.model)
    params = model.init(jax.random.key(0), x, jnp.zeros(2), jnp.zeros(2, jnp.int32))["params"]
    y = jnp.array([1, 2], jnp.int32)
    t = jnp.float32(0.7)  # noise level 0.3: inside the interval
    guided = build.guided_pred_fn(model, params, c, Transport())(x, t, y)
    c.sample.update(nag_mode="token", nag_scale=0.0)
    plain = build.guided_pred_fn(model, params, c, Transport())(x, t, y)
    # SiT linear velocity: dv = (1 - t) / t * w * grad log g(0.3 | x)
    expected = np.asarray(plain) + (0.3 / 0.7) * 1.5 * _fd_grad(estimator, x, 0.3)
    np.testing.assert_allclose(np.asarray(guided), expected, atol=2e-3)
    assert float(np.abs(expected - np.asarray(plain)).max()) > 1e-2  # the term is not vanishing


def test_classifier_mode_errors_name_the_fix(estimator):
    c = tiny_config()
    c.sample.update(nag_mode="classifier", nag_scale=1.0, nag_interval=(0.0, 0.6))
    model = build.build_model(c.model)
    with pytest.raises(ValueError, match="needs sample.estimator"):
        build.guided_pred_fn(model, {}, c, Transport())
    c.sample.update(estimator="/nonexistent", nag_interval=(0.0, 1.0))
    with pytest.raises(ValueError, match="end the interval below 1"):
        build.guided_pred_fn(model, {}, c, Transport())


def _random_checkpoint(c, path):
    """A converted-checkpoint layout with re-randomised weights (fresh ones output zero)."""
    from nag_jax.storage import weights

    model = build.build_model(c.model)
    x = jnp.zeros((1, 8, 8, 3))
    params = model.init(jax.random.key(0), x, jnp.zeros(1), jnp.zeros(1, jnp.int32))["params"]
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    params = jax.tree.unflatten(
        tree, [np.asarray(jax.random.normal(k, p.shape)) * 0.1 for k, p in zip(keys, leaves)]
    )
    weights.save_params(path, params, {})


@pytest.mark.slow  # ~80 s on the loaded 2-core machine (3 sampler + estimator compiles)
def test_noise_shift_mode_end_to_end_on_a_tiny_model(tmp_path):
    from nag_jax import parallel

    c = tiny_config()
    c.mode = "noise_shift"
    c.model.weights = str(tmp_path / "model")
    _random_checkpoint(c, c.model.weights)
    c.noise_shift = schema.noise_shift_section()
    c.noise_shift.update(num_images=8, batch_size=8, max_states=4, kde_states=2)
    c.noise_shift.rows = (
        dict(name="none"),
        dict(name="CFG+NAG", cfg_scale=1.5, nag_scale=1.0),
        dict(name="cls-NAG", nag_mode="classifier", nag_scale=1.0, nag_interval=(0.0, 0.6)),
    )
    c.noise_shift.estimator.update(num_bins=10, hidden=16, depth=1, num_steps=4, eval_images=16)
    out = noise_shift.run(c, str(tmp_path / "ns"))
    for f in ("results.json", "report.md", "noise_shift_kde.png", "noise_shift_delta.png"):
        assert os.path.exists(tmp_path / "ns" / f), f
    with open(tmp_path / "ns" / "results.json") as f:
        saved = json.load(f)
    assert set(saved["rows"]) == {"none", "CFG+NAG", "cls-NAG"}
    row = out["rows"]["none"]
    # ODE of 4 steps: states at t = 0, ..., 1 -> levels 1 ... 0 (4 of 5 kept, ends included)
    assert row["levels"][0] == pytest.approx(1.0) and row["levels"][-1] == pytest.approx(0.0)
    assert len(row["delta"]) == len(row["levels"]) == 4
    np.testing.assert_allclose(
        row["delta"], np.subtract(row["mean_traj"], row["mean_fwd"]), atol=1e-6
    )
    # At level 1 the sampler state IS fresh noise, like the forward sample: no shift there.
    assert abs(row["delta"][0]) < 0.05
    assert out["estimator"]["trained_here"] is True
    # the classifier row changed the trajectory (its term is on below level 0.6)
    assert out["rows"]["cls-NAG"]["mean_traj"][-1] != pytest.approx(row["mean_traj"][-1])
    # A second run reuses the saved estimator.
    mesh = parallel.create_mesh(c.parallel)
    process = build.build_process(c, for_sampling=True)
    _, path, info = sampler_shift.get_estimator(c, str(tmp_path / "ns"), mesh, process)
    assert info["trained_here"] is False and path.endswith("estimator")


@pytest.mark.parametrize("name", ["noise_shift_demo", "noise_shift_sit_xl", "noise_shift_dit_xl"])
def test_noise_shift_configs_validate_and_their_rows_build(name):
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"_cfg_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    assert c.mode == "noise_shift" and c.mode in schema.MODES
    schema.validate(c)
    names = [r["name"] for r in c.noise_shift.rows]
    assert names == ["none", "CFG", "NAG", "CFG+NAG", "cls-NAG"]
    for row in c.noise_shift.rows:
        rc = sampler_shift.row_config(c, dict(row), "est")
        assert rc.sample.nag_mode == row.get("nag_mode", "token")


def test_unknown_row_key_is_refused():
    c = tiny_config()
    c.noise_shift = schema.noise_shift_section()
    with pytest.raises(ValueError, match="unknown keys.*'cls_nag'"):
        sampler_shift.row_config(c, dict(name="x", cls_nag=1.0), "est")


@pytest.mark.slow  # ~40 s on the loaded 2-core machine (two SPMD compiles)
def test_sharded_estimator_training_equals_one_device():
    from nag_jax import parallel
    from nag_jax.analysis.estimator import train_estimator_sharded

    rs = np.random.RandomState(8)
    data = [rs.randn(16, 4, 4, 3).astype(np.float32) for _ in range(3)]
    module = NoiseLevelEstimator(num_bins=8, hidden=16, depth=1)  # MLP: cheap to compile
    outs = []
    for devices in (jax.devices()[:1], jax.devices()):
        mesh = parallel.create_mesh(tiny_config().parallel, devices)
        est, losses = train_estimator_sharded(
            jax.random.key(3), iter(data), Transport(), mesh, module=module, num_steps=3, lr=1e-2
        )
        outs.append((est.params, losses))
    assert len(jax.devices()) > 1  # conftest: 8 virtual CPU devices
    np.testing.assert_allclose(outs[0][1], outs[1][1], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(outs[0][0]), jax.tree.leaves(outs[1][0])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    assert outs[0][1][-1] != pytest.approx(outs[0][1][0])  # it trained
