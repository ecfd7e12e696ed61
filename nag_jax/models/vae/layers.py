"""The SD-VAE (diffusers ``AutoencoderKL``) as pure Flax linen modules, NHWC.

Architecture (diffusers ``AutoencoderKL`` with DownEncoderBlock2D / UpDecoderBlock2D blocks): every
GroupNorm has ``norm_num_groups`` groups and eps 1e-6, the activation is SiLU, the mid blocks are
resnet -> single-head self-attention -> resnet, the encoder's downsampling conv (3x3, stride 2)
pads only the bottom/right by one pixel, the decoder upsamples with nearest neighbour then a 3x3
conv. Module and parameter names mirror the diffusers state-dict keys, so the weights are read
through a table (`nag_jax.models.vae.weights.torch_key`):
``encoder.down_blocks.0.resnets.1.conv1.weight`` is the Flax path
``encoder/down_blocks_0/resnets_1/conv1/kernel`` (OIHW -> HWIO).

Params are float32; the compute dtype is a module attribute (``jnp.bfloat16`` on accelerators;
GroupNorm statistics and the attention softmax stay in float32). Images are NHWC float in
[-1, 1]; latents (N, H/8, W/8, 4) for the SD-VAE. No time convention is involved here.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from nag_jax.models.vae.config import Dtype, VAEConfig

__all__ = [
    "ResnetBlock2D",
    "Downsample2D",
    "Upsample2D",
    "Attention",
    "MidBlock",
    "EncoderBlock",
    "DecoderBlock",
    "Encoder",
    "Decoder",
    "AutoencoderKLModule",
    "init_params",
    "param_shapes",
]


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


def init_params(config: VAEConfig, key, image_size: int = 32) -> dict:
    """Random float32 params (diffusers' layout); ``image_size`` only sets the traced shape."""
    x = jnp.zeros((1, image_size, image_size, config.in_channels), jnp.float32)
    return AutoencoderKLModule(config, jnp.float32).init(key, x)["params"]


def param_shapes(config: VAEConfig, image_size: int = 32) -> dict:
    """The param tree of ``config`` as ShapeDtypeStructs, without allocating anything."""
    return jax.eval_shape(lambda k: init_params(config, k, image_size), jax.random.key(0))
