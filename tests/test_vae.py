"""SD-VAE (nag_jax.models.vae) parity with PyTorch, scaling, chunking, dtype, and loading.

Reference: diffusers' torch ``AutoencoderKL`` (a test requirement, CPU torch, no torchvision
needed; a missing one is an import error, not a skip) and our own torch port
``tests/vae_torch_reference.py``. Tiny random configurations, 16x16 images, float32 with matmul
precision "highest" (conftest): relative error <= 1e-5.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL as DiffusersAutoencoderKL
from vae_torch_reference import TorchAutoencoderKL

from nag_jax.models import vae as vae_lib

TINY = dict(
    block_out_channels=(32, 64),
    layers_per_block=1,
    norm_num_groups=8,
    latent_channels=4,
)
# Three levels, two resnets per block, 16 groups, no post_quant_conv.
TINY3 = dict(
    block_out_channels=(16, 32, 32),
    layers_per_block=2,
    norm_num_groups=16,
    latent_channels=4,
    use_post_quant_conv=False,
)
RTOL = 1e-5


def diffusers_config(cfg: dict) -> dict:
    n = len(cfg["block_out_channels"])
    return {
        "_class_name": "AutoencoderKL",
        "_diffusers_version": "0.42.1",
        "in_channels": 3,
        "out_channels": 3,
        "act_fn": "silu",
        "sample_size": 16,
        "down_block_types": ["DownEncoderBlock2D"] * n,
        "up_block_types": ["UpDecoderBlock2D"] * n,
        **{k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
    }


def make_torch_vae(cfg: dict, reference: str = "diffusers", seed: int = 0):
    """Random torch VAE ("diffusers" or "own" port) with every parameter (incl. norm affine)
    perturbed; eval mode."""
    torch.manual_seed(seed)
    if reference == "diffusers":
        d = diffusers_config(cfg)
        model = DiffusersAutoencoderKL(**{k: v for k, v in d.items() if not k.startswith("_")})
    else:
        model = TorchAutoencoderKL(**cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def torch_moments(model, x_nhwc: np.ndarray):
    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)))
        if isinstance(model, TorchAutoencoderKL):
            mean, logvar = model.encode(x)
        else:
            post = model.encode(x).latent_dist
            mean, logvar = post.mean, post.logvar
    return mean.numpy().transpose(0, 2, 3, 1), logvar.numpy().transpose(0, 2, 3, 1)


def torch_decode(model, z_nhwc_unscaled: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        z = torch.from_numpy(np.ascontiguousarray(z_nhwc_unscaled.transpose(0, 3, 1, 2)))
        out = model.decode(z)
        out = out if isinstance(model, TorchAutoencoderKL) else out.sample
    return out.numpy().transpose(0, 2, 3, 1)


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def images(n=3, size=16, seed=0):
    return np.random.RandomState(seed).uniform(-1, 1, (n, size, size, 3)).astype(np.float32)


def latents(n=3, size=8, seed=1):
    return np.random.RandomState(seed).randn(n, size, size, 4).astype(np.float32)


_VAES: dict = {}


def get_vae(name: str, chunk_size: int = 0, **kw) -> vae_lib.AutoencoderKL:
    """One AutoencoderKL per (config, options): its jitted encode/decode compile once per module."""
    key = (name, chunk_size, tuple(sorted(kw.items())))
    if key not in _VAES:
        cfg = {"TINY": TINY, "TINY3": TINY3}[name]
        _VAES[key] = vae_lib.AutoencoderKL(diffusers_config(cfg), chunk_size=chunk_size, **kw)
    return _VAES[key]


@pytest.fixture(scope="module")
def tiny():
    """(torch model, AutoencoderKL, params) for TINY, converted from the torch state dict."""
    model = make_torch_vae(TINY)
    vae = get_vae("TINY")
    params = vae_lib.params_from_state_dict(model.state_dict(), diffusers_config(TINY))
    return model, vae, params


# ----------------------------------------------------------------------------------------------
# Parity
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,reference",
    [("TINY", "diffusers"), ("TINY", "own"), ("TINY3", "diffusers")],
    ids=["2lvl-diffusers", "2lvl-own", "3lvl"],
)
def test_encode_decode_parity(name, reference):
    cfg = {"TINY": TINY, "TINY3": TINY3}[name]
    model = make_torch_vae(cfg, reference)
    n_down = 2 ** (len(cfg["block_out_channels"]) - 1)
    # TINY3 runs 3 images in chunks of 2 (padded lax.map path); TINY in one piece.
    vae = get_vae(name, chunk_size=2 if name == "TINY3" else 0)
    params = vae_lib.params_from_state_dict(model.state_dict(), diffusers_config(cfg))
    x = images()
    mean_t, logvar_t = torch_moments(model, x)

    mean_j = vae.encode(params, jnp.asarray(x), sample=False)
    assert mean_j.shape == (3, 16 // n_down, 16 // n_down, 4) and mean_j.dtype == jnp.float32
    assert rel_err(mean_j, mean_t * 0.18215) <= RTOL

    # Posterior sample: (mean + exp(logvar / 2) * eps) * scale with eps = normal(key, shape).
    key = jax.random.key(3)
    eps = np.asarray(jax.random.normal(key, mean_t.shape, jnp.float32))
    want = (mean_t + np.exp(0.5 * logvar_t) * eps) * 0.18215
    assert rel_err(vae.encode(params, jnp.asarray(x), key=key), want) <= RTOL

    z = latents(size=16 // n_down)
    dec_t = torch_decode(model, z / 0.18215)
    dec_j = vae.decode(params, jnp.asarray(z))
    assert dec_j.shape == (3, 16, 16, 3) and dec_j.dtype == jnp.float32
    assert rel_err(dec_j, dec_t) <= RTOL


def test_own_reference_matches_diffusers():
    """Pins the fallback reference to diffusers (same state dict -> same outputs)."""
    ref = make_torch_vae(TINY, "diffusers")
    own = TorchAutoencoderKL(**TINY).eval()
    own.load_state_dict(ref.state_dict(), strict=True)
    x = images()
    for a, b in zip(torch_moments(own, x), torch_moments(ref, x)):
        assert rel_err(a, b) <= RTOL
    z = latents()
    assert rel_err(torch_decode(own, z), torch_decode(ref, z)) <= RTOL


# ----------------------------------------------------------------------------------------------
# Scaling, sampling, chunking, dtype
# ----------------------------------------------------------------------------------------------


def test_scale_factor_applied(tiny):
    model, vae, params = tiny
    assert vae_lib.vae_scale == 0.18215 and vae.scaling_factor == 0.18215
    x, z = jnp.asarray(images()), jnp.asarray(latents())
    mean, _ = vae.moments(params, x)
    assert rel_err(vae.encode(params, x, sample=False), mean * 0.18215) <= RTOL
    # decode divides by the scale: decode(z) == raw decoder on z / 0.18215.
    raw = vae.module.apply(
        {"params": params}, z / 0.18215, method=vae_lib.AutoencoderKLModule.decode_raw
    )
    assert rel_err(vae.decode(params, z), raw) <= RTOL
    # And against torch: decode(z) is the torch decoder on z / 0.18215, not on z.
    assert rel_err(vae.decode(params, z), torch_decode(model, np.asarray(z) / 0.18215)) <= RTOL
    assert rel_err(vae.decode(params, z), torch_decode(model, np.asarray(z))) > 1e-2


def test_shift_and_custom_scaling_factor(tiny):
    _, _, params = tiny
    cfg = {**diffusers_config(TINY), "scaling_factor": 0.5, "shift_factor": 0.25}
    vae = vae_lib.AutoencoderKL(cfg)
    x, z = jnp.asarray(images()), jnp.asarray(latents())
    mean, _ = vae.moments(params, x)
    assert rel_err(vae.encode(params, x, sample=False), (mean - 0.25) * 0.5) <= RTOL
    base = get_vae("TINY")
    assert rel_err(vae.decode(params, z), base.decode(params, (z / 0.5 + 0.25) * 0.18215)) <= RTOL


def test_sample_false_or_no_key_gives_mean(tiny):
    _, vae, params = tiny
    x = jnp.asarray(images())
    mean = vae.encode(params, x, sample=False)
    np.testing.assert_array_equal(vae.encode(params, x), mean)  # key None -> mean
    np.testing.assert_array_equal(vae.encode(params, x, key=jax.random.key(0), sample=False), mean)
    s0 = vae.encode(params, x, key=jax.random.key(0))
    s1 = vae.encode(params, x, key=jax.random.key(1))
    assert not np.allclose(s0, mean) and not np.allclose(s0, s1)
    np.testing.assert_array_equal(s0, vae.encode(params, x, key=jax.random.key(0)))


def test_chunking_does_not_change_results(tiny):
    _, _, params = tiny
    x, z = jnp.asarray(images(n=5)), jnp.asarray(latents(n=5))
    key = jax.random.key(7)
    outs = []
    for chunk in (0, 2):  # whole batch vs 3 chunks of 2 (one padded row)
        v = get_vae("TINY", chunk_size=chunk)
        outs.append((v.encode(params, x, key=key), v.decode(params, z)))
    assert rel_err(outs[1][0], outs[0][0]) <= RTOL
    assert rel_err(outs[1][1], outs[0][1]) <= RTOL


def test_bfloat16_compute(tiny):
    _, vae, params = tiny
    vbf = get_vae("TINY", dtype=jnp.bfloat16)
    z = jnp.asarray(latents())  # same shapes as the float32 tests: the f32 side is compiled
    out = vbf.decode(params, z)
    assert out.dtype == jnp.float32
    assert 0 < rel_err(out, vae.decode(params, z)) < 3e-2
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(vbf.init(jax.random.key(0), 16)))


def test_bad_shapes_raise(tiny):
    _, vae, params = tiny
    with pytest.raises(ValueError, match="NHWC latents"):
        vae.decode(params, jnp.zeros((1, 4, 8, 8)))
    with pytest.raises(ValueError, match="multiples of 2"):
        vae.encode(params, jnp.zeros((1, 15, 16, 3)))


def test_default_config_is_sd_vae():
    """Default config = SD-VAE: 83.65M params, the diffusers keys, 8x downsampling."""
    vae = vae_lib.AutoencoderKL()
    shapes = vae.param_shapes()
    n = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes))
    assert n == 83_653_863  # sum over stabilityai/sd-vae-ft-ema's state dict
    assert vae.config.downsample_factor == 8
    keys = vae_lib.state_dict_from_params(
        jax.tree.map(lambda s: np.zeros(s.shape, np.float32), shapes)
    ).keys()
    assert "encoder.mid_block.attentions.0.to_out.0.weight" in keys
    assert "decoder.up_blocks.3.resnets.2.conv2.weight" in keys
    assert "decoder.up_blocks.2.upsamplers.0.conv.weight" in keys
    assert "decoder.up_blocks.3.upsamplers.0.conv.weight" not in keys
    assert "encoder.down_blocks.3.downsamplers.0.conv.weight" not in keys


def test_config_from_dict_rejects_unsupported():
    with pytest.raises(ValueError, match="up_block_types"):
        vae_lib.VAEConfig.from_dict(
            {**diffusers_config(TINY), "up_block_types": ["AttnUpDecoderBlock2D"] * 2}
        )
    with pytest.raises(ValueError, match="latents_mean"):
        vae_lib.VAEConfig.from_dict({**diffusers_config(TINY), "latents_mean": [0.0] * 4})
    with pytest.raises(ValueError, match="divisible by norm_num_groups"):
        vae_lib.VAEConfig.from_dict({**diffusers_config(TINY), "norm_num_groups": 24})
    cfg = vae_lib.VAEConfig.from_dict(diffusers_config(TINY))
    assert vae_lib.VAEConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.slow
def test_full_size_sd_vae_parity():
    """Default (SD-VAE) config, random weights, 64px images / 8x8 latents vs the torch reference."""
    cfg = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32)
    model = make_torch_vae({**cfg, "latent_channels": 4})
    vae = vae_lib.AutoencoderKL()  # defaults = SD-VAE
    params = vae_lib.params_from_state_dict(model.state_dict(), vae.config)
    x = images(n=1, size=64)
    mean_t, _ = torch_moments(model, x)
    assert rel_err(vae.encode(params, jnp.asarray(x), sample=False), mean_t * 0.18215) <= RTOL
    z = latents(n=1, size=8)
    assert rel_err(vae.decode(params, jnp.asarray(z)), torch_decode(model, z / 0.18215)) <= RTOL
