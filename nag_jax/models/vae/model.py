"""The Stable Diffusion VAE (diffusers ``AutoencoderKL``) as pure Flax linen modules, NHWC.

Used by DiT/SiT to move between pixels and latents (factor 8 per side for the 4-level SD-VAE):

    latents = encode(params, images) = (posterior sample or mean - shift) * scaling_factor
    images  = decode(params, latents) = decoder(latents / scaling_factor + shift)

with ``scaling_factor = 0.18215`` and no shift for stabilityai/sd-vae-ft-ema and -mse (the
checkpoints the DiT/SiT releases use). Images are NHWC float in [-1, 1]; latents are NHWC
(N, H/8, W/8, 4). No time convention is involved here.

Architecture (diffusers ``AutoencoderKL`` with DownEncoderBlock2D / UpDecoderBlock2D blocks): every
GroupNorm has ``norm_num_groups`` groups and eps 1e-6, the activation is SiLU, the mid blocks are
resnet -> single-head self-attention -> resnet, the encoder's downsampling conv (3x3, stride 2)
pads only the bottom/right by one pixel, the decoder upsamples with nearest neighbour then a 3x3
conv. Module and parameter names mirror the diffusers state-dict keys, so the weights are read
through a table (``torch_key``, section "Weights" below):
``encoder.down_blocks.0.resnets.1.conv1.weight`` is the Flax path
``encoder/down_blocks_0/resnets_1/conv1/kernel`` (OIHW -> HWIO); ``...attentions.0.to_out.0``
is ``attentions_0/to_out_0`` (Linear weight transposed); GroupNorm ``weight`` is ``scale``. Old
checkpoints that name the mid-block attention ``query/key/value/proj_attn`` (diffusers < 0.14, as
the original sd-vae-ft-* uploads) are renamed as diffusers does on load, and 1x1-conv-shaped
(C, C, 1, 1) attention weights are accepted as (C, C). Loading is strict: every weight must be
used and every shape must match the config, or ``VAEWeightsError`` lists what differs.

Params are float32; the compute dtype is a constructor option (``jnp.bfloat16`` on accelerators;
GroupNorm statistics and the attention softmax stay in float32). Encode/decode run in chunks of
``chunk_size`` images (one ``lax.map``) so that a large batch does not hold every activation of
the 256px decoder at once.

Typical use::

    vae, params = load_vae("/path/to/sd-vae-ft-ema")    # diffusers folder or converted folder
    z = vae.encode(params, images, key=key)             # (N, 32, 32, 4) for 256px images
    x = vae.decode(params, z)                            # (N, 256, 256, 3) in [-1, 1] (unclipped)
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from nag_jax.storage import weights
from nag_jax.storage.paths import as_path, is_remote

Dtype = Any

vae_scale = 0.18215
"""Latent scaling factor of the SD-VAE (``latents = posterior * vae_scale``)."""
VAE_SCALE = vae_scale

SUPPORTED_DOWN_BLOCK = "DownEncoderBlock2D"
SUPPORTED_UP_BLOCK = "UpDecoderBlock2D"

WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
ORBAX_PARAMS_DIR = weights.PARAMS_ITEM
HUB_HINT = (
    "Download a diffusers-format VAE beforehand, e.g. `hf download stabilityai/sd-vae-ft-ema "
    "--local-dir DIR` (`huggingface-cli download ...` with older huggingface_hub; or "
    "stabilityai/sd-vae-ft-mse), then pass DIR or convert it with "
    "`python -m nag_jax.convert vae --src DIR --dst OUT`."
)


# ----------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    """The subset of a diffusers ``AutoencoderKL`` config.json that defines the network.

    Defaults are the SD-VAE (stabilityai/sd-vae-ft-ema / -mse). ``from_dict`` accepts the
    diffusers dict (keys starting with ``_`` ignored) and refuses settings this port does not
    implement, naming the key.
    """

    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    latent_channels: int = 4
    norm_num_groups: int = 32
    act_fn: str = "silu"
    sample_size: int = 256
    scaling_factor: float = vae_scale
    shift_factor: float | None = None
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True

    def __post_init__(self):
        object.__setattr__(
            self, "block_out_channels", tuple(int(c) for c in self.block_out_channels)
        )
        if not self.block_out_channels:
            raise ValueError(
                "VAEConfig.block_out_channels is empty; expected e.g. (128, 256, 512, 512)"
            )
        for c in self.block_out_channels:
            if c % self.norm_num_groups:
                raise ValueError(
                    f"VAEConfig: block_out_channels {self.block_out_channels} must all be "
                    f"divisible by norm_num_groups={self.norm_num_groups}; change one of them"
                )
        if self.act_fn not in ("silu", "swish"):
            raise ValueError(f"VAEConfig.act_fn={self.act_fn!r} is not supported; expected 'silu'")
        if self.layers_per_block < 1:
            raise ValueError(f"VAEConfig.layers_per_block={self.layers_per_block}; expected >= 1")

    @property
    def downsample_factor(self) -> int:
        """Pixels per latent per side (8 for the SD-VAE)."""
        return 2 ** (len(self.block_out_channels) - 1)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> VAEConfig:
        """Builds a config from a diffusers ``AutoencoderKL`` config.json dict."""
        cls_name = dict(d).get("_class_name")
        d = {k: v for k, v in dict(d).items() if not k.startswith("_")}
        if cls_name not in (None, "AutoencoderKL"):
            raise ValueError(f"VAE config _class_name={cls_name!r}; expected 'AutoencoderKL'")
        n = len(d.get("block_out_channels", cls.block_out_channels))
        for key, want in (
            ("down_block_types", SUPPORTED_DOWN_BLOCK),
            ("up_block_types", SUPPORTED_UP_BLOCK),
        ):
            types = d.pop(key, None)
            if types is None:
                continue
            if list(types) != [want] * n:
                raise ValueError(
                    f"VAE config {key}={list(types)} is not supported; expected {n} x {want!r} "
                    "(one per entry of block_out_channels)"
                )
        for key in ("latents_mean", "latents_std"):
            if d.pop(key, None) is not None:
                raise ValueError(
                    f"VAE config sets {key}; per-channel latent statistics are not supported"
                )
        d.pop("force_upcast", None)
        if "norm_type" in d and d.pop("norm_type") != "group":
            raise ValueError("VAE config norm_type must be 'group' (spatial norm is not supported)")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields)
        if unknown:
            raise ValueError(
                f"VAE config has keys this port does not implement: {unknown}; "
                f"supported: {sorted(fields)}"
            )
        if isinstance(d.get("sample_size"), (list, tuple)):
            d["sample_size"] = int(d["sample_size"][0])
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        """The diffusers-style config.json dict (loadable by diffusers and by ``from_dict``)."""
        d = dataclasses.asdict(self)
        d["block_out_channels"] = list(self.block_out_channels)
        n = len(self.block_out_channels)
        return {
            "_class_name": "AutoencoderKL",
            "down_block_types": [SUPPORTED_DOWN_BLOCK] * n,
            "up_block_types": [SUPPORTED_UP_BLOCK] * n,
            **d,
        }


def _as_config(config) -> VAEConfig:
    if config is None:
        return VAEConfig()
    if isinstance(config, VAEConfig):
        return config
    if isinstance(config, Mapping):
        return VAEConfig.from_dict(config)
    raise TypeError(
        f"VAE config must be a VAEConfig or a diffusers config dict, got {type(config)}"
    )


# ----------------------------------------------------------------------------------------------
# Layers (NHWC)
# ----------------------------------------------------------------------------------------------


def _group_norm(groups: int, dtype: Dtype, name: str) -> nn.GroupNorm:
    # Two-pass variance (use_fast_variance=False) as torch computes it; float32 statistics.
    return nn.GroupNorm(
        num_groups=groups, epsilon=1e-6, dtype=dtype, use_fast_variance=False, name=name
    )


def _conv(features: int, kernel: int, dtype: Dtype, name: str, stride: int = 1, padding="SAME"):
    if padding == "SAME":
        p = kernel // 2
        padding = ((p, p), (p, p))
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=padding,
        dtype=dtype,
        name=name,
    )


class ResnetBlock2D(nn.Module):
    """GN -> SiLU -> conv3 -> GN -> SiLU -> conv3, plus a 1x1 ``conv_shortcut`` when C changes."""

    out_channels: int
    groups: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        h = nn.silu(_group_norm(self.groups, self.dtype, "norm1")(x))
        h = _conv(self.out_channels, 3, self.dtype, "conv1")(h)
        h = nn.silu(_group_norm(self.groups, self.dtype, "norm2")(h))
        h = _conv(self.out_channels, 3, self.dtype, "conv2")(h)
        if x.shape[-1] != self.out_channels:
            x = _conv(self.out_channels, 1, self.dtype, "conv_shortcut")(x)
        return x + h


class Downsample2D(nn.Module):
    """Pad bottom/right by 1 (diffusers ``padding=0`` path), then 3x3 conv with stride 2."""

    channels: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
        return _conv(self.channels, 3, self.dtype, "conv", stride=2, padding="VALID")(x)


class Upsample2D(nn.Module):
    """Nearest-neighbour x2 upsampling, then a 3x3 conv."""

    channels: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return _conv(self.channels, 3, self.dtype, "conv")(x)


class Attention(nn.Module):
    """Single-head spatial self-attention with GroupNorm and a residual connection.

    x (N, H, W, C) -> x + to_out_0(softmax(q k^T / sqrt(C)) v), q/k/v = to_q/k/v(GN(x)) over the
    H*W tokens. The softmax is computed in float32 (diffusers ``upcast_softmax``).
    """

    groups: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        n, h, w, c = x.shape
        t = _group_norm(self.groups, self.dtype, "group_norm")(x).reshape(n, h * w, c)
        dense = functools.partial(nn.Dense, c, dtype=self.dtype)
        q, k, v = dense(name="to_q")(t), dense(name="to_k")(t), dense(name="to_v")(t)
        logits = jnp.einsum("nqc,nkc->nqk", q, k).astype(jnp.float32) * (c**-0.5)
        weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        out = jnp.einsum("nqk,nkc->nqc", weights, v)
        out = dense(name="to_out_0")(out).reshape(n, h, w, c)
        return x + out


class MidBlock(nn.Module):
    """resnets_0 -> attentions_0 -> resnets_1 at constant width."""

    channels: int
    groups: int
    add_attention: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = ResnetBlock2D(self.channels, self.groups, self.dtype, name="resnets_0")(x)
        if self.add_attention:
            x = Attention(self.groups, self.dtype, name="attentions_0")(x)
        return ResnetBlock2D(self.channels, self.groups, self.dtype, name="resnets_1")(x)


class EncoderBlock(nn.Module):
    """DownEncoderBlock2D: ``num_layers`` resnets, then an optional downsampler."""

    out_channels: int
    num_layers: int
    groups: int
    add_downsample: bool
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        for i in range(self.num_layers):
            x = ResnetBlock2D(self.out_channels, self.groups, self.dtype, name=f"resnets_{i}")(x)
        if self.add_downsample:
            x = Downsample2D(self.out_channels, self.dtype, name="downsamplers_0")(x)
        return x


class DecoderBlock(nn.Module):
    """UpDecoderBlock2D: ``num_layers`` resnets, then an optional upsampler."""

    out_channels: int
    num_layers: int
    groups: int
    add_upsample: bool
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        for i in range(self.num_layers):
            x = ResnetBlock2D(self.out_channels, self.groups, self.dtype, name=f"resnets_{i}")(x)
        if self.add_upsample:
            x = Upsample2D(self.out_channels, self.dtype, name="upsamplers_0")(x)
        return x


class Encoder(nn.Module):
    """(N, H, W, in_channels) images -> (N, H/f, W/f, 2 * latent_channels) moments.

    The moments are taken before ``quant_conv``; f = 2 ** (len(block_out_channels) - 1).
    """

    config: VAEConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        cfg, g = self.config, self.config.norm_num_groups
        chans = cfg.block_out_channels
        x = _conv(chans[0], 3, self.dtype, "conv_in")(x.astype(self.dtype))
        for i, c in enumerate(chans):
            x = EncoderBlock(
                c, cfg.layers_per_block, g, i < len(chans) - 1, self.dtype, name=f"down_blocks_{i}"
            )(x)
        x = MidBlock(chans[-1], g, cfg.mid_block_add_attention, self.dtype, name="mid_block")(x)
        x = nn.silu(_group_norm(g, self.dtype, "conv_norm_out")(x))
        return _conv(2 * cfg.latent_channels, 3, self.dtype, "conv_out")(x)


class Decoder(nn.Module):
    """(N, h, w, latent_channels) (after post_quant_conv) -> (N, h*f, w*f, out_channels)."""

    config: VAEConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, z):
        cfg, g = self.config, self.config.norm_num_groups
        chans = tuple(reversed(cfg.block_out_channels))
        x = _conv(chans[0], 3, self.dtype, "conv_in")(z.astype(self.dtype))
        x = MidBlock(chans[0], g, cfg.mid_block_add_attention, self.dtype, name="mid_block")(x)
        for i, c in enumerate(chans):
            x = DecoderBlock(
                c,
                cfg.layers_per_block + 1,
                g,
                i < len(chans) - 1,
                self.dtype,
                name=f"up_blocks_{i}",
            )(x)
        x = nn.silu(_group_norm(g, self.dtype, "conv_norm_out")(x))
        return _conv(cfg.out_channels, 3, self.dtype, "conv_out")(x)


class AutoencoderKLModule(nn.Module):
    """The linen module; param tree {encoder, decoder, quant_conv?, post_quant_conv?}.

    Methods (use with ``module.apply({'params': p}, x, method=...)``):
      ``moments(images)`` -> (N, h, w, 2L) float32 [mean | logvar] (after quant_conv),
      ``decode_raw(z)``   -> (N, H, W, out_channels) float32, z UNscaled latents.
    ``__call__`` runs both (for init).
    """

    config: VAEConfig
    dtype: Dtype = jnp.float32

    def setup(self):
        cfg = self.config
        self.encoder = Encoder(cfg, self.dtype)
        self.decoder = Decoder(cfg, self.dtype)
        if cfg.use_quant_conv:
            self.quant_conv = _conv(2 * cfg.latent_channels, 1, self.dtype, "quant_conv")
        if cfg.use_post_quant_conv:
            self.post_quant_conv = _conv(cfg.latent_channels, 1, self.dtype, "post_quant_conv")

    def moments(self, images):
        h = self.encoder(images)
        if self.config.use_quant_conv:
            h = self.quant_conv(h)
        return h.astype(jnp.float32)

    def decode_raw(self, z):
        z = z.astype(self.dtype)
        if self.config.use_post_quant_conv:
            z = self.post_quant_conv(z)
        return self.decoder(z).astype(jnp.float32)

    def __call__(self, images):
        m = self.moments(images)
        return self.decode_raw(m[..., : self.config.latent_channels])


# ----------------------------------------------------------------------------------------------
# Functional wrapper
# ----------------------------------------------------------------------------------------------


def _chunked(fn, xs, chunk: int):
    """fn over the leading axis of the pytree ``xs`` in chunks of ``chunk`` rows (one lax.map).

    The batch is zero-padded to a multiple of ``chunk``; rows never interact, so padding rows
    are simply dropped. ``chunk <= 0`` or a batch <= chunk runs ``fn`` once on everything.
    """
    n = jax.tree.leaves(xs)[0].shape[0]
    if chunk <= 0 or n <= chunk:
        return fn(xs)
    steps = -(-n // chunk)
    pad = steps * chunk - n

    def split(a):
        a = jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1))
        return a.reshape(steps, chunk, *a.shape[1:])

    out = jax.lax.map(fn, jax.tree.map(split, xs))
    return jax.tree.map(lambda a: a.reshape(steps * chunk, *a.shape[2:])[:n], out)


class AutoencoderKL:
    """Pure-function SD-VAE: ``encode(params, images)`` / ``decode(params, latents)``.

    Args:
      config: ``VAEConfig``, a diffusers config.json dict, or None (SD-VAE defaults).
      dtype: compute dtype (params stay float32); outputs are always float32.
      chunk_size: images per lax.map step in encode/decode (bounds activation memory);
        0 = whole batch at once.

    The jitted ``encode``/``decode`` may also be called inside other jitted functions.
    """

    def __init__(self, config=None, *, dtype: Dtype = jnp.float32, chunk_size: int = 8):
        self.config = _as_config(config)
        self.dtype = jnp.dtype(dtype)
        self.chunk_size = int(chunk_size)
        self.module = AutoencoderKLModule(self.config, self.dtype)
        self.encode = jax.jit(self._encode, static_argnames=("sample",))
        self.decode = jax.jit(self._decode)

    def __repr__(self):
        return (
            f"AutoencoderKL({self.config}, dtype={self.dtype.name}, chunk_size={self.chunk_size})"
        )

    @property
    def scaling_factor(self) -> float:
        return float(self.config.scaling_factor)

    @property
    def shift_factor(self) -> float:
        return float(self.config.shift_factor or 0.0)

    def init(self, key, image_size: int = 32) -> dict:
        """Random float32 params (diffusers' layout); ``image_size`` only sets the traced shape."""
        x = jnp.zeros((1, image_size, image_size, self.config.in_channels), jnp.float32)
        return AutoencoderKLModule(self.config, jnp.float32).init(key, x)["params"]

    def param_shapes(self, image_size: int = 32) -> dict:
        """The param tree as ShapeDtypeStructs, without allocating anything."""
        return jax.eval_shape(lambda k: self.init(k, image_size), jax.random.key(0))

    def moments(self, params, images):
        """(N, H, W, C) images in [-1, 1] -> (mean, logvar), each (N, H/f, W/f, L) float32,
        unscaled; logvar clipped to [-30, 20] as diffusers does."""
        self._check_images(images)

        def fn(x):
            return self.module.apply({"params": params}, x, method=AutoencoderKLModule.moments)

        m = _chunked(fn, images, self.chunk_size)
        mean, logvar = jnp.split(m, 2, axis=-1)
        return mean, jnp.clip(logvar, -30.0, 20.0)

    def _encode(self, params, images, key=None, sample: bool = True):
        """Images (N, H, W, C) in [-1, 1] -> scaled latents (N, H/f, W/f, L) float32.

        Samples the posterior (mean + std * eps, eps ~ N(0, 1) from ``key``) when a key is given
        and ``sample`` is True; otherwise returns the posterior mean. Then
        ``latents = (z - shift_factor) * scaling_factor`` (shift 0 for the SD-VAE).
        """
        mean, logvar = self.moments(params, images)
        z = mean
        if key is not None and sample:
            z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape, jnp.float32)
        return (z - self.shift_factor) * self.scaling_factor

    def _decode(self, params, latents):
        """Scaled latents (N, h, w, L) -> images (N, h*f, w*f, C) float32, nominally in [-1, 1]
        (not clipped: use ``nag_jax.utils.to_uint8`` to quantise)."""
        if latents.ndim != 4 or latents.shape[-1] != self.config.latent_channels:
            raise ValueError(
                f"decode expects NHWC latents (N, h, w, {self.config.latent_channels}), got shape "
                f"{latents.shape}; transpose NCHW tensors with x.transpose(0, 2, 3, 1)"
            )
        z = latents.astype(jnp.float32) / self.scaling_factor + self.shift_factor

        def fn(x):
            return self.module.apply({"params": params}, x, method=AutoencoderKLModule.decode_raw)

        return _chunked(fn, z, self.chunk_size)

    def _check_images(self, images):
        f = self.config.downsample_factor
        if (
            images.ndim != 4
            or images.shape[-1] != self.config.in_channels
            or images.shape[1] % f
            or images.shape[2] % f
        ):
            raise ValueError(
                f"encode expects NHWC images (N, H, W, {self.config.in_channels}) with H and W "
                f"multiples of {f}, got shape {images.shape}"
            )


# ----------------------------------------------------------------------------------------------
# Weights: the diffusers key table, diffusers folders and converted folders
# ----------------------------------------------------------------------------------------------

_INDEXED = {
    "down_blocks",
    "up_blocks",
    "resnets",
    "attentions",
    "downsamplers",
    "upsamplers",
    "to_out",
}
_LEGACY_ATTN = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_LEGACY_RE = re.compile(r"^(.*\.attentions\.\d+)\.(query|key|value|proj_attn)\.(weight|bias)$")
_MAX_LISTED = 25


class VAEWeightsError(weights.CheckpointError):
    """Weights and config disagree (missing / unexpected / mis-shaped keys). A ValueError."""


def torch_key(path: tuple[str, ...]) -> str:
    """Flax param path -> diffusers state-dict key.

    ('decoder', 'up_blocks_1', 'upsamplers_0', 'conv', 'kernel')
    -> 'decoder.up_blocks.1.upsamplers.0.conv.weight'.
    """
    parts = []
    for name in path[:-1]:
        m = re.fullmatch(r"(.+)_(\d+)", name)
        if m and m.group(1) in _INDEXED:
            parts += [m.group(1), m.group(2)]
        else:
            parts.append(name)
    leaf = path[-1]
    parts.append({"kernel": "weight", "scale": "weight", "bias": "bias"}[leaf])
    return ".".join(parts)


def _torch_shape(flax_shape: tuple[int, ...]) -> tuple[int, ...]:
    if len(flax_shape) == 4:  # HWIO -> OIHW
        kh, kw, i, o = flax_shape
        return (o, i, kh, kw)
    if len(flax_shape) == 2:  # (in, out) -> (out, in)
        return (flax_shape[1], flax_shape[0])
    return tuple(flax_shape)


def _to_flax(arr: np.ndarray, flax_ndim: int) -> np.ndarray:
    arr = np.asarray(arr, dtype=np.float32)
    if flax_ndim == 4:
        return np.ascontiguousarray(arr.transpose(2, 3, 1, 0))
    if flax_ndim == 2:
        if arr.ndim == 4:  # legacy 1x1-conv attention projection
            arr = arr[:, :, 0, 0]
        return np.ascontiguousarray(arr.T)
    return arr


def _to_torch(arr: np.ndarray) -> np.ndarray:
    arr = np.asarray(arr, dtype=np.float32)
    if arr.ndim == 4:
        return np.ascontiguousarray(arr.transpose(3, 2, 0, 1))
    if arr.ndim == 2:
        return np.ascontiguousarray(arr.T)
    return arr


def normalize_state_dict(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Renames legacy attention keys (query/key/value/proj_attn) as diffusers does on load."""
    out = {}
    for k, v in state_dict.items():
        m = _LEGACY_RE.match(k)
        if m:
            new = f"{m.group(1)}.{_LEGACY_ATTN[m.group(2)]}.{m.group(3)}"
            if new in state_dict:
                raise VAEWeightsError(f"state dict has both {k!r} and {new!r}; keep only one")
            k = new
        out[k] = v
    return out


def infer_config_from_state_dict(state_dict: Mapping[str, Any]) -> dict:
    """The config values the weights imply (block_out_channels, layers_per_block, channels).

    Best effort, used in error messages; norm_num_groups cannot be read from the weights.
    """
    sd = normalize_state_dict(state_dict)
    shapes = {k: tuple(np.shape(v)) for k, v in sd.items()}
    out: dict = {}
    chans, i = [], 0
    while f"encoder.down_blocks.{i}.resnets.0.conv1.weight" in shapes:
        chans.append(shapes[f"encoder.down_blocks.{i}.resnets.0.conv1.weight"][0])
        i += 1
    if chans:
        out["block_out_channels"] = tuple(chans)
    n = 0
    while f"encoder.down_blocks.0.resnets.{n}.conv1.weight" in shapes:
        n += 1
    if n:
        out["layers_per_block"] = n
    if "encoder.conv_in.weight" in shapes:
        out["in_channels"] = shapes["encoder.conv_in.weight"][1]
    if "decoder.conv_in.weight" in shapes:
        out["latent_channels"] = shapes["decoder.conv_in.weight"][1]
    if "decoder.conv_out.weight" in shapes:
        out["out_channels"] = shapes["decoder.conv_out.weight"][0]
    out["use_quant_conv"] = "quant_conv.weight" in shapes
    out["use_post_quant_conv"] = "post_quant_conv.weight" in shapes
    out["mid_block_add_attention"] = any(".mid_block.attentions." in k for k in shapes)
    return out


def _listing(title: str, items: list[str]) -> str:
    shown = items[:_MAX_LISTED]
    more = f"\n    ... and {len(items) - len(shown)} more" if len(items) > len(shown) else ""
    return f"  {title} ({len(items)}):\n" + "\n".join(f"    {s}" for s in shown) + more


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "detach"):  # torch tensor (bf16 has no numpy dtype)
        import torch

        return x.detach().to(torch.float32).cpu().numpy()
    return np.asarray(x)


def params_from_state_dict(state_dict: Mapping[str, Any], config, *, source: str = "state dict"):
    """diffusers ``AutoencoderKL`` state dict -> Flax float32 params for ``config``. Strict.

    Raises ``VAEWeightsError`` naming every missing, unexpected and mis-shaped key.
    """
    vae = AutoencoderKL(config)
    cfg = vae.config
    expected = traverse_util.flatten_dict(vae.param_shapes())
    sd = normalize_state_dict(state_dict)
    missing, mismatched, flat = [], [], {}
    for path, spec in expected.items():
        key = torch_key(path)
        want = _torch_shape(spec.shape)
        if key not in sd:
            missing.append(f"{key} {want}")
            continue
        got = tuple(np.shape(sd[key]))
        if not (got == want or (len(want) == 2 and got == (*want, 1, 1))):
            mismatched.append(f"{key}: weights {got}, config expects {want}")
            continue
        flat[path] = _to_flax(_as_numpy(sd[key]), len(spec.shape))
    unexpected = sorted(set(sd) - {torch_key(path) for path in expected})
    if missing or unexpected or mismatched:
        parts = [
            f"VAE weights in {source} do not match the config "
            f"(block_out_channels={cfg.block_out_channels}, layers_per_block="
            f"{cfg.layers_per_block}, latent_channels={cfg.latent_channels}, in/out_channels="
            f"{cfg.in_channels}/{cfg.out_channels}):"
        ]
        if missing:
            parts.append(_listing("missing from the weights", missing))
        if unexpected:
            parts.append(_listing("unexpected (not used by the config)", unexpected))
        if mismatched:
            parts.append(_listing("shape mismatches", mismatched))
        implied = infer_config_from_state_dict(state_dict)
        differs = {k: v for k, v in implied.items() if getattr(cfg, k) != v}
        if differs:
            parts.append(
                f"  the weights look like a VAE with {differs}: check that config.json belongs "
                "to these weights (or fix the config passed in)."
            )
        raise VAEWeightsError("\n".join(parts))
    return traverse_util.unflatten_dict(flat)


def state_dict_from_params(params) -> dict[str, np.ndarray]:
    """Flax params -> diffusers state dict (float32 numpy, current diffusers key names)."""
    flat = traverse_util.flatten_dict(dict(params))
    return {torch_key(path): _to_torch(np.asarray(v)) for path, v in flat.items()}


def find_vae_dir(path: str) -> str:
    """Resolves ``path`` (local or remote, nag_jax.storage.paths) to the folder holding the VAE's
    config.json.

    Accepts the VAE folder itself or a full diffusers pipeline folder with a ``vae/`` subfolder.
    """
    folder = as_path(path)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"VAE path {str(folder)!r} does not exist or is not a directory. Expected a "
            f"diffusers folder with config.json and one of {list(WEIGHT_FILES)}, or an Orbax "
            f"directory written by `python -m nag_jax.convert vae` (config.json + "
            f"{ORBAX_PARAMS_DIR}/). " + HUB_HINT
        )
    if not (folder / "config.json").exists() and (folder / "vae" / "config.json").exists():
        folder = folder / "vae"
    return str(folder)


def _folder_names(folder) -> list[str]:
    return sorted(p.name for p in as_path(folder).iterdir())


def read_config(path: str) -> dict:
    """The config.json dict of a VAE folder (diffusers or converted), with a clear error."""
    cfg_path = as_path(path) / "config.json"
    if not cfg_path.exists():
        raise FileNotFoundError(
            f"No config.json in VAE folder {path!r} (found: {_folder_names(path)}). "
            f"Expected the diffusers files config.json + one of {list(WEIGHT_FILES)}. " + HUB_HINT
        )
    return json.loads(cfg_path.read_text())


def is_orbax_vae_dir(path: str) -> bool:
    """True when ``path`` looks like the output of ``python -m nag_jax.convert vae``."""
    return (as_path(path) / ORBAX_PARAMS_DIR).is_dir()


def read_state_dict(path: str) -> tuple[dict[str, Any], str]:
    """Reads the diffusers weight file of a VAE folder -> (state dict, file path).

    safetensors are read as numpy (through torch only for dtypes numpy lacks, e.g. bfloat16);
    a .bin needs torch (``weights_only=True``: no code is unpickled). A remote folder's file is
    read through epath (safetensors from bytes, torch from the open file).
    """
    for name in WEIGHT_FILES:
        fp = as_path(path) / name
        f = str(fp)
        if not fp.exists():
            continue
        remote = is_remote(fp)
        if f.endswith(".safetensors"):
            from safetensors import safe_open

            try:
                if remote:
                    from safetensors.numpy import load

                    return dict(load(fp.read_bytes())), f
                with safe_open(f, framework="np") as sf:
                    return {k: sf.get_tensor(k) for k in sf.keys()}, f  # noqa: SIM118
            except (TypeError, ValueError):  # e.g. bfloat16: go through torch
                from safetensors.torch import load, load_file

                return (dict(load(fp.read_bytes())) if remote else dict(load_file(f))), f
        import torch

        with fp.open("rb") as fh:
            sd = torch.load(fh, map_location="cpu", weights_only=True)
        if isinstance(sd, Mapping) and "state_dict" in sd and len(sd) <= 3:
            sd = sd["state_dict"]
        return dict(sd), f
    raise FileNotFoundError(
        f"No VAE weights in {path!r} (found: {_folder_names(path)}); expected one of "
        f"{list(WEIGHT_FILES)} next to config.json. " + HUB_HINT
    )


def load_diffusers(path: str) -> tuple[VAEConfig, dict]:
    """A diffusers VAE folder -> (VAEConfig, float32 Flax params), strictly checked."""
    path = find_vae_dir(path)
    config = VAEConfig.from_dict(read_config(path))
    state_dict, f = read_state_dict(path)
    return config, params_from_state_dict(state_dict, config, source=f)


def load_converted(path: str) -> tuple[VAEConfig, dict]:
    """A folder written by ``python -m nag_jax.convert vae`` (config.json + params/, read by
    ``nag_jax.storage.weights.load_params``) -> (VAEConfig, float32 params), checked against the
    config."""
    path = find_vae_dir(path)
    config = VAEConfig.from_dict(read_config(path))
    params, _ = weights.load_params(path)
    weights.check_params_match(
        AutoencoderKL(config).param_shapes(),
        params,
        source=f"{path}/{ORBAX_PARAMS_DIR}",
        hint=f"Its params do not match its config.json (block_out_channels="
        f"{config.block_out_channels}, layers_per_block={config.layers_per_block}, "
        f"latent_channels={config.latent_channels}): convert the VAE again with "
        "`python -m nag_jax.convert vae --src DIR --dst OUT --force`.",
        error=VAEWeightsError,
    )
    return config, params


def load_vae(path: str, *, dtype: Dtype = jnp.float32, chunk_size: int = 8):
    """Loads a VAE -> (AutoencoderKL, float32 params).

    ``path``: a diffusers folder (config.json + diffusion_pytorch_model.safetensors or .bin, e.g.
    a local download of stabilityai/sd-vae-ft-ema), a pipeline folder with such a ``vae/``
    subfolder, or a folder converted by ``python -m nag_jax.convert vae``.
    The weights are checked strictly against the config (every key used, every shape matched).
    """
    path = find_vae_dir(path)
    load = load_converted if is_orbax_vae_dir(path) else load_diffusers
    config, params = load(path)
    return AutoencoderKL(config, dtype=dtype, chunk_size=chunk_size), params
