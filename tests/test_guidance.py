"""Guidance algebra, branch fusion (one network call per step, counted in the trace), intervals."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nag_jax.config import schema
from nag_jax.guidance import (
    CLASS_UNCOND,
    COND,
    NOISE_UNCOND,
    GuidanceConfig,
    branch_inputs,
    guided_prediction,
)
from nag_jax.sampling import build, generate
from tests.helpers import (
    conv_batch_sizes,
    init_params,
    linear_em_reference,
    rerandomize,
    tiny_model,
)

N, H, C = 3, 8, 3


def toy_net(x, t, y, drop_class, drop_noise):
    """A network whose three branches give different, hand-computable outputs."""
    tt = t.reshape(-1, 1, 1, 1)
    yy = y.astype(jnp.float32).reshape(-1, 1, 1, 1)
    dc = drop_class.reshape(-1, 1, 1, 1)
    dn = drop_noise.reshape(-1, 1, 1, 1)
    class_term = jnp.where(dc, -1.0, yy)
    time_term = jnp.where(dn, 0.25, tt)
    return x * 2.0 + class_term + 3.0 * time_term


def branch_values(x, t, y):
    t = jnp.full((x.shape[0],), t)
    no = jnp.zeros((x.shape[0],), bool)
    yes = jnp.ones((x.shape[0],), bool)
    return (
        toy_net(x, t, y, no, no),
        toy_net(x, t, y, yes, no),
        toy_net(x, t, y, no, yes),
    )


@pytest.fixture
def inputs():
    x = jax.random.normal(jax.random.key(0), (N, H, H, C))
    y = jnp.array([0, 2, 4])
    return x, y


def test_scales_off_give_the_conditional_prediction(inputs):
    x, y = inputs
    pred_fn = guided_prediction(toy_net, GuidanceConfig(), noise_level_fn=lambda t: 1 - t)
    c, _, _ = branch_values(x, 0.3, y)
    np.testing.assert_array_equal(np.asarray(pred_fn(x, jnp.float32(0.3), y)), np.asarray(c))


@pytest.mark.parametrize("s_cfg, w_nag", [(1.5, 0.0), (1.0, 2.0), (4.0, 1.5), (0.5, -0.5)])
def test_combination_matches_the_formula(inputs, s_cfg, w_nag):
    x, y = inputs
    g = GuidanceConfig(cfg_scale=s_cfg, nag_scale=w_nag)
    pred = guided_prediction(toy_net, g, noise_level_fn=lambda t: 1 - t)(x, jnp.float32(0.7), y)
    c, u_y, u_t = branch_values(x, 0.7, y)
    expected = c + (s_cfg - 1) * (c - u_y) + w_nag * (c - u_t)
    np.testing.assert_allclose(np.asarray(pred), np.asarray(expected), rtol=1e-6, atol=1e-6)


def test_branch_rows_carry_the_masks(inputs):
    x, y = inputs
    xb, tb, yb, dc, dn = branch_inputs(x, 0.5, y, (COND, CLASS_UNCOND, NOISE_UNCOND))
    assert xb.shape == (3 * N, H, H, C) and tb.shape == (3 * N,) and yb.shape == (3 * N,)
    np.testing.assert_array_equal(np.asarray(dc), [0] * N + [1] * N + [0] * N)
    np.testing.assert_array_equal(np.asarray(dn), [0] * N + [0] * N + [1] * N)


def test_legacy_cfg_guides_three_channels_and_variance_comes_from_cond(inputs):
    x, y = inputs
    x6 = jnp.concatenate([x, x], axis=-1)  # a DiT-like 2C = 6 channel output
    g = GuidanceConfig(cfg_scale=3.0, nag_scale=1.0, cfg_channels=2)
    pred = guided_prediction(toy_net, g, noise_level_fn=lambda t: t, guided_channels=C)(
        x6, jnp.float32(0.5), y
    )
    c, u_y, u_t = branch_values(x6, 0.5, y)
    cfg = 2.0 * (c - u_y)
    expected_guided = c[..., :C] + 1.0 * (c - u_t)[..., :C]
    expected_guided = expected_guided.at[..., :2].add(cfg[..., :2])
    np.testing.assert_allclose(np.asarray(pred[..., :C]), np.asarray(expected_guided), atol=1e-6)
    np.testing.assert_array_equal(np.asarray(pred[..., C:]), np.asarray(c[..., C:]))


def test_intervals_switch_terms_off_outside_their_range(inputs):
    x, y = inputs
    g = GuidanceConfig(cfg_scale=2.0, nag_scale=1.0, cfg_interval=(0.0, 0.5), nag_interval=(0.3, 1))
    pred_fn = jax.jit(guided_prediction(toy_net, g, noise_level_fn=lambda t: 1 - t))
    for t, cfg_on, nag_on in [(0.9, True, False), (0.6, True, True), (0.2, False, True)]:
        c, u_y, u_t = branch_values(x, t, y)
        expected = c + cfg_on * 1.0 * (c - u_y) + nag_on * 1.0 * (c - u_t)
        np.testing.assert_allclose(
            np.asarray(pred_fn(x, jnp.float32(t), y)), np.asarray(expected), atol=1e-6
        )


def test_interval_branches_are_not_computed_outside_the_interval(inputs):
    """With a NAG interval, the traced step holds a cond-only call (N rows) and a fused call
    (2N rows) under lax.switch; only one executes per step."""
    x, y = inputs
    model = tiny_model()
    params = rerandomize(init_params(model))
    net = build.make_net_fn(model, params, "SiT")
    g = GuidanceConfig(nag_scale=1.0, nag_interval=(0.0, 0.5))
    pred_fn = guided_prediction(net, g, noise_level_fn=lambda t: 1 - t)
    sizes = conv_batch_sizes(pred_fn, x, jnp.float32(0.3), y)
    assert sorted(sizes) == [N, 2 * N]


def demo_config(sampler="ode", num_steps=4, cfg=1.0, nag=0.0, name="SiT-S/2"):
    # completed, not validated: test_sampler_family_mismatch_is_named wants the sampler's check
    return schema.complete(
        dict(
            mode="sample",
            model=dict(
                name=name,
                input_size=8,
                in_channels=3,
                num_classes=5,
                hidden_size=32,
                depth=2,
                num_heads=4,
            ),
            process=dict(path="linear", prediction="velocity"),
            sample=dict(
                sampler=sampler, num_steps=num_steps, method="euler", cfg_scale=cfg, nag_scale=nag
            ),
        )
    )


@pytest.mark.parametrize(
    "sampler, name, cfg, nag, branches",
    [
        ("ode", "SiT-S/2", 1.0, 0.0, 1),
        ("ode", "SiT-S/2", 1.5, 0.0, 2),
        ("ode", "SiT-S/2", 1.0, 1.0, 2),
        ("sde", "SiT-S/2", 1.5, 1.0, 3),
        ("ddpm", "DiT-S/2", 1.5, 1.0, 3),
    ],
)
def test_one_network_call_per_step_with_all_active_branches(sampler, name, cfg, nag, branches):
    config = demo_config(sampler, cfg=cfg, nag=nag, name=name)
    model = build.build_model(config.model)
    params = init_params(model)
    sample_fn = build.build_sampler(config, model)
    keys = generate.per_image_keys(jax.random.key(0), jnp.arange(N))
    sizes = conv_batch_sizes(sample_fn, params, keys, jnp.arange(N))
    # The scan body is traced once: one call per step; the SDE's "Mean" last step adds one.
    expected_calls = 2 if sampler == "sde" else 1
    assert sizes == [branches * N] * expected_calls


def test_samples_equal_a_hand_assembled_guided_sde():
    """build_sampler's samples for a key equal a plain loop assembled from the documented pieces:
    image i starts at normal(fold_in(keys[i], 0)) and its step k draws normal(split(fold_in(
    keys[i], 1), S)[k]) (S = 4 stochastic steps); the prediction is c + (s - 1)(c - u_y) +
    w (c - u_t) from three SEPARATE network calls; Euler-Maruyama on the Linear path with the
    'Mean' last step (float64 numpy). Another key gives other samples."""
    s_cfg, w_nag, n_steps = 1.5, 1.0, 5
    config = demo_config("sde", num_steps=n_steps, cfg=s_cfg, nag=w_nag)
    model = build.build_model(config.model)
    params = rerandomize(init_params(model))
    sample_fn = jax.jit(build.build_sampler(config, model))
    y = jnp.arange(4)
    keys = generate.per_image_keys(jax.random.key(7), y)
    shape = (model.input_size, model.input_size, model.in_channels)
    x_init = np.stack(
        [np.asarray(jax.random.normal(jax.random.fold_in(k, 0), shape)) for k in keys]
    )
    noise = np.stack(
        [
            [
                np.asarray(jax.random.normal(sk, shape))
                for sk in jax.random.split(jax.random.fold_in(k, 1), n_steps - 1)
            ]
            for k in keys
        ],
        axis=1,
    )  # (S, N, H, W, C)
    apply = jax.jit(
        lambda x, t, dc, dn: model.apply(
            {"params": params}, x, jnp.full((4,), t), y, drop_class=dc, drop_noise=dn
        )[..., : model.in_channels]
    )
    no, yes = jnp.zeros((4,), bool), jnp.ones((4,), bool)

    def velocity(x, t):
        xj = jnp.asarray(x, jnp.float32)
        c, u_y, u_t = (
            np.asarray(apply(xj, jnp.float32(t), dc, dn), np.float64)
            for dc, dn in ((no, no), (yes, no), (no, yes))
        )
        return c + (s_cfg - 1) * (c - u_y) + w_nag * (c - u_t)

    expected = linear_em_reference(velocity, x_init, noise, n_steps)
    got = np.asarray(sample_fn(params, keys, y))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    other = sample_fn(params, generate.per_image_keys(jax.random.key(8), y), y)
    assert not np.allclose(got, np.asarray(other))


def test_image_depends_only_on_its_own_key():
    config = demo_config("sde", num_steps=5, cfg=1.5, nag=1.0)
    model = build.build_model(config.model)
    params = rerandomize(init_params(model))
    sample_fn = jax.jit(build.build_sampler(config, model))
    keys = generate.per_image_keys(jax.random.key(3), jnp.arange(4))
    full = sample_fn(params, keys, jnp.arange(4))
    part = sample_fn(params, keys[2:], jnp.arange(4)[2:])
    np.testing.assert_allclose(np.asarray(full[2:]), np.asarray(part), atol=1e-5)


def test_sampler_family_mismatch_is_named():
    config = demo_config("ddpm", name="SiT-S/2")
    with pytest.raises(ValueError, match="SiT models sample with one of"):
        build.build_sampler(config, build.build_model(config.model))


def test_traced_scales_reuse_one_compilation_and_match_static_scales(inputs):
    x, y = inputs
    g = GuidanceConfig(cfg_scale=2.0, nag_scale=1.0)

    @jax.jit
    def run(scales):
        return guided_prediction(toy_net, g, noise_level_fn=lambda t: 1 - t, scales=scales)(
            x, jnp.float32(0.4), y
        )

    for s_cfg, w_nag in [(3.0, 0.5), (1.0, 0.0), (1.5, 2.0)]:
        static = guided_prediction(
            toy_net, GuidanceConfig(cfg_scale=s_cfg, nag_scale=w_nag), noise_level_fn=lambda t: t
        )(x, jnp.float32(0.4), y)
        np.testing.assert_allclose(
            np.asarray(run(jnp.array([s_cfg, w_nag]))), np.asarray(static), atol=1e-6
        )
    assert run._cache_size() == 1
