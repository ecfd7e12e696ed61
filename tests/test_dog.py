"""Domain Guidance (two-model guidance): the formula against separate calls of two param sets,
the stacked (vmapped) call against two sequential calls, and the pre-trained tree's fitting."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nag_jax.config import schema
from nag_jax.guidance import GuidanceConfig, TwoModelNet, guided_prediction
from nag_jax.sampling import build, generate
from tests.helpers import conv_batch_sizes, init_params, rerandomize, tiny_model

N = 3


@pytest.fixture(scope="module")
def two_models():
    """A fine-tuned model (5 classes, null noise token) and a DIFFERENT pre-trained one with 7
    classes and no null token: the DoG branch reads only the pre-trained null label row."""
    ft_model = tiny_model()
    pre_model = tiny_model(num_classes=7, null_noise="zero")
    ft = rerandomize(init_params(ft_model), seed=1)
    pre = rerandomize(init_params(pre_model), seed=2)
    x = jax.random.normal(jax.random.key(0), (N, 8, 8, 3))
    y = jnp.array([0, 3, 4])
    return ft_model, pre_model, ft, pre, x, y


def _apply(model, params, x, t, y, drop_class, drop_noise):
    n = x.shape[0]
    out = model.apply(
        {"params": params},
        x,
        jnp.full((n,), t),
        y,
        drop_class=jnp.full((n,), drop_class),
        drop_noise=jnp.full((n,), drop_noise),
    )
    return np.asarray(out[..., :3], np.float64)


@pytest.mark.parametrize("stacked", [True, False])
@pytest.mark.parametrize("s_cfg, w_nag, s_dog", [(1.0, 0.0, 2.0), (1.5, 1.0, 3.0), (1.0, 2.0, 1.5)])
def test_dog_equals_the_hand_assembled_combination(two_models, stacked, s_cfg, w_nag, s_dog):
    """pred = c + (s_cfg-1)(c-u_y) + (s_dog-1)(c-u_pre) + w_nag(c-u_t), each branch a SEPARATE
    call; u_pre is the ORIGINAL 7-class pre-trained model at its own null label (row 7)."""
    ft_model, pre_model, ft, pre, x, y = two_models
    params = {"main": ft, "domain": build.domain_params_like(ft, pre)}
    net = build.make_two_model_net(ft_model, params, "SiT", stacked)
    g = GuidanceConfig(cfg_scale=s_cfg, nag_scale=w_nag, dog_scale=s_dog)
    pred = jax.jit(guided_prediction(net, g, noise_level_fn=lambda t: 1 - t))(
        x, jnp.float32(0.4), y
    )
    c = _apply(ft_model, ft, x, 0.4, y, False, False)
    u_y = _apply(ft_model, ft, x, 0.4, y, True, False)
    u_t = _apply(ft_model, ft, x, 0.4, y, False, True)
    u_pre = _apply(pre_model, pre, x, 0.4, y, True, False)
    expected = c + (s_cfg - 1) * (c - u_y) + (s_dog - 1) * (c - u_pre) + w_nag * (c - u_t)
    assert np.abs(c - u_pre).max() > 1e-2  # the two networks differ
    np.testing.assert_allclose(np.asarray(pred), expected, rtol=1e-4, atol=1e-4)


def _config(cfg=1.0, nag=0.0, dog=1.0, call="stacked"):
    return schema.resolve(
        dict(
            model=dict(
                name="SiT-S/2", input_size=8, in_channels=3, num_classes=5, hidden_size=32,
                depth=2, num_heads=4,
            ),
            process=dict(path="linear", prediction="velocity"),
            sample=dict(
                sampler="sde", num_steps=4, method="euler", cfg_scale=cfg, nag_scale=nag,
                dog_scale=dog, dog_call=call,
            ),
        ),
        mode="sample",
    )  # fmt: skip


@pytest.mark.parametrize("nag", [0.0, 1.0])
def test_stacked_sampler_equals_two_sequential_calls(two_models, nag):
    """The whole SDE sampler with the two networks as one vmapped call equals the sampler with
    two sequential calls (DoG alone: equal rows; DoG + NAG: the domain rows padded)."""
    ft_model, _, ft, pre, _, y = two_models
    params = {"main": ft, "domain": build.domain_params_like(ft, pre)}
    keys = generate.per_image_keys(jax.random.key(5), jnp.arange(N))
    out = {}
    for call in ("stacked", "sequential"):
        fn = jax.jit(build.build_sampler(_config(nag=nag, dog=2.0, call=call), ft_model))
        out[call] = np.asarray(fn(params, keys, y))
    np.testing.assert_allclose(out["stacked"], out["sequential"], rtol=1e-5, atol=1e-5)
    plain = jax.jit(build.build_sampler(_config(nag=nag), ft_model))(ft, keys, y)
    assert np.abs(out["stacked"] - np.asarray(plain)).max() > 1e-3  # DoG changed the samples


def test_stacked_is_one_network_call_sequential_two(two_models):
    """Network calls per step (the backbone's one convolution): stacked 1, sequential 2."""
    ft_model, _, ft, pre, x, y = two_models
    params = {"main": ft, "domain": build.domain_params_like(ft, pre)}
    g = GuidanceConfig(nag_scale=1.0, dog_scale=2.0)
    sizes = {}
    for stacked in (True, False):
        net = build.make_two_model_net(ft_model, params, "SiT", stacked)
        pred_fn = guided_prediction(net, g, noise_level_fn=lambda t: 1 - t)
        sizes[stacked] = conv_batch_sizes(pred_fn, x, jnp.float32(0.3), y)
    assert len(sizes[True]) == 1
    assert sorted(sizes[False]) == [N, 2 * N]


def test_dog_without_a_second_network_is_a_clear_error(two_models):
    ft_model, _, ft, _, x, y = two_models
    net = build.make_net_fn(ft_model, ft, "SiT")
    pred_fn = guided_prediction(net, GuidanceConfig(dog_scale=2.0), noise_level_fn=lambda t: t)
    with pytest.raises(ValueError, match="second set of weights"):
        pred_fn(x, jnp.float32(0.5), y)
    with pytest.raises(ValueError, match="domain_weights"):
        build.make_two_model_net(ft_model, ft, "SiT", True)


def test_pretrained_of_another_architecture_is_named(two_models):
    _, _, ft, _, _, _ = two_models
    wide = init_params(tiny_model(hidden_size=64))
    with pytest.raises(ValueError, match="do not share the fine-tuned model's architecture"):
        build.domain_params_like(ft, wide)
    with pytest.raises(ValueError, match="dog_call='sequential'"):
        TwoModelNet(lambda p, *a: a[0], {"w": jnp.zeros(2)}, {"w": jnp.zeros(3)}, stacked=True)
