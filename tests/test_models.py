"""The DiT/SiT backbone: shapes for every registered size, release initialisation, NAG masks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nag_jax.models import create_model, model_names, parse_model_name
from nag_jax.models.embeddings import get_2d_sincos_pos_embed, timestep_embedding
from tests.helpers import init_params, rerandomize, tiny_model


@pytest.mark.parametrize("name", model_names())
def test_every_registered_size_has_the_release_shapes(name):
    family, size, patch = parse_model_name(name)
    model = create_model(name)
    x = jnp.zeros((2, 32, 32, 4))
    out, variables = jax.eval_shape(
        lambda: model.init_with_output(jax.random.key(0), x, jnp.zeros(2), jnp.zeros(2, jnp.int32))
    )
    assert out.shape == (2, 32, 32, 8)
    p = variables["params"]
    d = model.hidden_size
    assert p["x_embedder"]["proj"]["kernel"].shape == (patch, patch, 4, d)
    assert p["y_embedder"]["embedding_table"]["embedding"].shape == (1001, d)
    assert p["final_layer"]["linear"]["kernel"].shape == (d, patch * patch * 8)
    assert len([k for k in p if k.startswith("blocks_")]) == model.depth


def _count(tree) -> int:
    return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


def test_xl2_parameter_count_equals_the_release():
    model = create_model("SiT-XL/2")
    x = jnp.zeros((1, 32, 32, 4))
    shapes = jax.eval_shape(model.init, jax.random.key(0), x, jnp.zeros(1), jnp.zeros(1, jnp.int32))
    pos_embed = 256 * 1152  # fixed, saved in the release's state dict, not a Flax parameter here
    assert _count(shapes["params"]) + pos_embed == 675_129_632 + 1_152
    assert shapes["params"]["null_noise_token"].shape == (1152,)
    zero = create_model("SiT-XL/2", null_noise="zero")
    shapes = jax.eval_shape(zero.init, jax.random.key(0), x, jnp.zeros(1), jnp.zeros(1, jnp.int32))
    assert _count(shapes["params"]) + pos_embed == 675_129_632


def test_fresh_model_outputs_exactly_zero():
    model = tiny_model()
    params = init_params(model)
    x = jax.random.normal(jax.random.key(1), (3, 8, 8, 3))
    out = model.apply({"params": params}, x, jnp.array([0.1, 0.5, 0.9]), jnp.array([0, 1, 4]))
    assert out.shape == (3, 8, 8, 6)
    assert np.all(np.asarray(out) == 0.0)


def test_release_initialisation_statistics():
    model = tiny_model(hidden_size=64, num_heads=4)
    p = init_params(model)
    assert float(jnp.std(p["y_embedder"]["embedding_table"]["embedding"])) == pytest.approx(
        0.02, rel=0.15
    )
    # Xavier-uniform on the flattened (D, C*p*p) conv: bound sqrt(6 / (C*p*p + D)).
    kernel = p["x_embedder"]["proj"]["kernel"]
    bound = np.sqrt(6.0 / (3 * 2 * 2 + 64))
    assert float(jnp.abs(kernel).max()) <= bound
    assert float(jnp.abs(kernel).max()) > 0.8 * bound
    for name in ("adaLN_modulation_1",):
        assert not np.any(np.asarray(p["blocks_0"][name]["kernel"]))
    assert not np.any(np.asarray(p["final_layer"]["linear"]["kernel"]))


def test_timestep_embedding_is_cos_first():
    t = jnp.array([0.0, 3.0])
    emb = timestep_embedding(t, 8)
    freqs = np.exp(-np.log(10000.0) * np.arange(4) / 4)
    expected = np.concatenate([np.cos(3.0 * freqs), np.sin(3.0 * freqs)])
    np.testing.assert_allclose(np.asarray(emb[1]), expected, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(emb[0]), [1, 1, 1, 1, 0, 0, 0, 0])


def test_pos_embed_layout_column_then_row():
    d, g = 16, 3
    pe = get_2d_sincos_pos_embed(d, g)
    assert pe.shape == (9, 16) and pe.dtype == np.float32
    # token (row=1, col=2) is index 5: first half encodes the column 2, second half the row 1.
    omega = 1.0 / 10000 ** (np.arange(4) / 4.0)
    col = np.concatenate([np.sin(2 * omega), np.cos(2 * omega)])
    row = np.concatenate([np.sin(1 * omega), np.cos(1 * omega)])
    np.testing.assert_allclose(pe[5], np.concatenate([col, row]), rtol=1e-6)


@pytest.fixture(scope="module")
def random_model():
    model = tiny_model()
    params = rerandomize(init_params(model))
    apply = jax.jit(model.apply)
    return model, params, apply


def test_dropped_class_uses_the_null_row(random_model):
    model, params, apply = random_model
    x = jax.random.normal(jax.random.key(2), (2, 8, 8, 3))
    t = jnp.array([0.3, 0.3])
    dropped = apply({"params": params}, x, t, jnp.array([1, 3]), drop_class=jnp.array([True, True]))
    null_label = jnp.full((2,), model.num_classes)
    explicit = apply({"params": params}, x, t, null_label)
    np.testing.assert_array_equal(np.asarray(dropped), np.asarray(explicit))
    kept = apply({"params": params}, x, t, jnp.array([1, 3]), drop_class=jnp.array([False, False]))
    assert not np.allclose(np.asarray(kept), np.asarray(dropped))


def test_dropped_noise_ignores_t_and_uses_the_null_token(random_model):
    model, params, apply = random_model
    x = jax.random.normal(jax.random.key(3), (1, 8, 8, 3))
    y = jnp.array([2])
    drop = jnp.array([True])
    outs = [apply({"params": params}, x, jnp.array([t]), y, drop_noise=drop) for t in (0.0, 0.5, 1)]
    np.testing.assert_array_equal(np.asarray(outs[0]), np.asarray(outs[1]))
    np.testing.assert_array_equal(np.asarray(outs[0]), np.asarray(outs[2]))
    # Changing the null token changes the noise-unconditional output, and only it.
    bumped = dict(params, null_noise_token=params["null_noise_token"] + 1.0)
    out_bumped = apply({"params": bumped}, x, jnp.array([0.5]), y, drop_noise=drop)
    assert not np.allclose(np.asarray(out_bumped), np.asarray(outs[1]))
    cond = apply({"params": params}, x, jnp.array([0.5]), y)
    cond_bumped = apply({"params": bumped}, x, jnp.array([0.5]), y)
    np.testing.assert_array_equal(np.asarray(cond), np.asarray(cond_bumped))
    assert not np.allclose(np.asarray(cond), np.asarray(outs[1]))


def test_masks_act_per_example(random_model):
    model, params, apply = random_model
    x = jax.random.normal(jax.random.key(4), (3, 8, 8, 3))
    t, y = jnp.array([0.2, 0.4, 0.6]), jnp.array([0, 1, 2])
    mixed = apply(
        {"params": params},
        x,
        t,
        y,
        drop_class=jnp.array([False, True, False]),
        drop_noise=jnp.array([False, False, True]),
    )
    for i, (dc, dn) in enumerate([(False, False), (True, False), (False, True)]):
        single = apply(
            {"params": params},
            x[i : i + 1],
            t[i : i + 1],
            y[i : i + 1],
            drop_class=jnp.array([dc]),
            drop_noise=jnp.array([dn]),
        )
        np.testing.assert_allclose(np.asarray(mixed[i]), np.asarray(single[0]), atol=2e-5)


def test_zero_null_noise_option_has_no_parameter_and_uses_zeros():
    model = tiny_model(null_noise="zero")
    params = rerandomize(init_params(model))
    assert "null_noise_token" not in params
    x = jax.random.normal(jax.random.key(5), (1, 8, 8, 3))
    out = model.apply(
        {"params": params}, x, jnp.array([0.7]), jnp.array([1]), drop_noise=jnp.array([True])
    )
    assert np.all(np.isfinite(np.asarray(out))) and np.abs(np.asarray(out)).max() > 0


def test_bfloat16_compute_keeps_float32_params_and_output():
    model = tiny_model(dtype="bfloat16")
    params = init_params(model)
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(params))
    params = rerandomize(params)
    x = jax.random.normal(jax.random.key(6), (2, 8, 8, 3))
    out = model.apply({"params": params}, x, jnp.array([0.1, 0.2]), jnp.array([0, 1]))
    ref = tiny_model().apply({"params": params}, x, jnp.array([0.1, 0.2]), jnp.array([0, 1]))
    assert out.dtype == jnp.float32
    assert float(jnp.abs(out - ref).max() / jnp.abs(ref).max()) < 0.05


@pytest.mark.parametrize(
    "name, kwargs, match",
    [
        ("SiT-XXL/2", {}, "Unknown model name"),
        ("SiT-XL/3", {}, "Unknown model name"),
        ("SiT-S/8", {"input_size": 12}, "not divisible by patch"),
        ("SiT-S/2", {"hidden_size": 30, "num_heads": 4}, "not divisible by num_heads"),
        ("SiT-S/2", {"null_noise": "mean"}, "null_noise"),
    ],
)
def test_impossible_model_configs_are_named(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        create_model(name, **kwargs)
