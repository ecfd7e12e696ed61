"""The DiT/SiT backbone as Flax linen modules, with NAG's drop-class and drop-noise masks.

Module and parameter names mirror the PyTorch releases (x_embedder, t_embedder, y_embedder,
blocks_{i}, final_layer, adaLN_modulation_1), so the converter is a table: a PyTorch key
``blocks.3.attn.qkv.weight`` is the Flax path ``blocks_3/attn/qkv/kernel`` (transposed).

Time convention: the network embeds whatever scalar time the family feeds it. SiT: float t in
[0, 1] with 0 = noise and 1 = data. DiT: the integer step 0..999 as float, 0 = least noise.

NAG conditioning: each example may drop its class (-> the null label row ``num_classes``) and/or
its noise condition (-> the null noise token replaces the whole timestep embedding, so the output
no longer depends on t). Conditional, class-unconditional and noise-unconditional branches are
therefore just rows of one batch.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from nag_jax.models.attention import attention
from nag_jax.models.embeddings import (
    FREQUENCY_EMBEDDING_SIZE,
    get_2d_sincos_pos_embed,
    timestep_embedding,
)
from nag_jax.models.linear import dot_general_for

Dtype = Any

xavier_uniform = nn.initializers.xavier_uniform()
# The releases initialise the patch conv with Xavier on its flattened (D, C*p*p) view.
conv_xavier_uniform = nn.initializers.xavier_uniform(in_axis=(0, 1, 2), out_axis=-1)
normal_002 = nn.initializers.normal(stddev=0.02)
zeros = nn.initializers.zeros


def modulate(x, shift, scale):
    """adaLN modulation: (N, T, D) tokens with (N, D) shift/scale -> x * (1 + scale) + shift."""
    return x * (1 + scale[:, None, :]) + shift[:, None, :]


def _dense(features: int, dense_impl: str | None, **kwargs) -> nn.Dense:
    """A ``flax.linen.Dense`` whose products are ``dense_impl``'s (nag_jax.models.linear)."""
    return nn.Dense(features, dot_general=dot_general_for(dense_impl), **kwargs)


def _layer_norm(dtype: Dtype) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=1e-6, use_bias=False, use_scale=False, dtype=dtype)


class PatchEmbed(nn.Module):
    """(N, H, W, C) -> (N, (H/p)*(W/p), D) tokens (row-major) through a stride-p conv ``proj``."""

    hidden_size: int
    patch_size: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        p = self.patch_size
        x = nn.Conv(
            self.hidden_size,
            kernel_size=(p, p),
            strides=(p, p),
            padding="VALID",
            kernel_init=conv_xavier_uniform,
            dtype=self.dtype,
            name="proj",
        )(x.astype(self.dtype))
        return x.reshape(x.shape[0], -1, self.hidden_size)


class TimestepEmbedder(nn.Module):
    """t (N,) -> (N, D): sinusoid(256, cos first) -> Linear -> SiLU -> Linear."""

    hidden_size: int
    dtype: Dtype = jnp.float32
    dense_impl: str | None = None

    @nn.compact
    def __call__(self, t):
        emb = timestep_embedding(t, FREQUENCY_EMBEDDING_SIZE)
        dense = lambda name: _dense(
            self.hidden_size, self.dense_impl, kernel_init=normal_002, dtype=self.dtype, name=name
        )
        return dense("mlp_2")(nn.silu(dense("mlp_0")(emb)))


class LabelEmbedder(nn.Module):
    """Label table with a null row at index ``num_classes`` (class dropout / CFG)."""

    num_classes: int
    hidden_size: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, y, drop_class=None):
        if drop_class is not None:
            y = jnp.where(drop_class, self.num_classes, y)
        table = nn.Embed(
            self.num_classes + 1,
            self.hidden_size,
            embedding_init=normal_002,
            dtype=self.dtype,
            name="embedding_table",
        )
        return table(y)


class Attention(nn.Module):
    """Multi-head self-attention, qkv rows [q; k; v] head-major as in timm, via the fused op."""

    hidden_size: int
    num_heads: int
    dtype: Dtype = jnp.float32
    implementation: str | None = None  # nag_jax.models.attention: None/"explicit"/"xla"/"cudnn"
    dense_impl: str | None = None  # nag_jax.models.linear: None/"transposed_input"/"xla"

    @nn.compact
    def __call__(self, x):
        n, t, d = x.shape
        head_dim = d // self.num_heads
        dense = lambda features, name: _dense(
            features, self.dense_impl, kernel_init=xavier_uniform, dtype=self.dtype, name=name
        )
        qkv = dense(3 * d, "qkv")(x)
        out = attention(qkv.reshape(n, t, 3, self.num_heads, head_dim), self.implementation)
        return dense(d, "proj")(out.reshape(n, t, d))


class Mlp(nn.Module):
    hidden_size: int
    mlp_ratio: float = 4.0
    dtype: Dtype = jnp.float32
    dense_impl: str | None = None

    @nn.compact
    def __call__(self, x):
        h = int(self.hidden_size * self.mlp_ratio)
        dense = lambda features, name: _dense(
            features, self.dense_impl, kernel_init=xavier_uniform, dtype=self.dtype, name=name
        )
        x = nn.gelu(dense(h, "fc1")(x), approximate=True)
        return dense(self.hidden_size, "fc2")(x)


class DiTBlock(nn.Module):
    """adaLN-Zero transformer block."""

    hidden_size: int
    num_heads: int
    mlp_ratio: float = 4.0
    dtype: Dtype = jnp.float32
    attention_impl: str | None = None
    dense_impl: str | None = None

    @nn.compact
    def __call__(self, x, c):
        mod = _dense(
            6 * self.hidden_size,
            self.dense_impl,
            kernel_init=zeros,
            bias_init=zeros,
            dtype=self.dtype,
            name="adaLN_modulation_1",
        )(nn.silu(c))
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = jnp.split(mod, 6, axis=-1)
        attn = Attention(
            self.hidden_size,
            self.num_heads,
            self.dtype,
            self.attention_impl,
            self.dense_impl,
            name="attn",
        )
        h = attn(modulate(_layer_norm(self.dtype)(x), shift_msa, scale_msa))
        x = x + gate_msa[:, None, :] * h
        mlp = Mlp(self.hidden_size, self.mlp_ratio, self.dtype, self.dense_impl, name="mlp")
        h = mlp(modulate(_layer_norm(self.dtype)(x), shift_mlp, scale_mlp))
        return x + gate_mlp[:, None, :] * h


class FinalLayer(nn.Module):
    hidden_size: int
    patch_size: int
    out_channels: int
    dtype: Dtype = jnp.float32
    dense_impl: str | None = None

    @nn.compact
    def __call__(self, x, c):
        mod = _dense(
            2 * self.hidden_size,
            self.dense_impl,
            kernel_init=zeros,
            dtype=self.dtype,
            name="adaLN_modulation_1",
        )(nn.silu(c))
        shift, scale = jnp.split(mod, 2, axis=-1)
        x = modulate(_layer_norm(self.dtype)(x), shift, scale)
        return _dense(
            self.patch_size * self.patch_size * self.out_channels,
            self.dense_impl,
            kernel_init=zeros,
            dtype=self.dtype,
            name="linear",
        )(x)


class DiT(nn.Module):
    """Diffusion transformer (DiT / SiT backbone).

    Attributes:
      input_size: spatial size H = W of the input (32 for 256px latents).
      patch_size: p; H must be divisible by p.
      in_channels: C.
      hidden_size, depth, num_heads, mlp_ratio: transformer size (see registry.MODEL_SIZES).
      num_classes: labels 0..num_classes-1; row ``num_classes`` is the null class.
      learn_sigma: output 2C channels (DiT: eps and the variance value v; SiT ignores the second
        half).
      null_noise: "learned" (a D-vector parameter ``null_noise_token``) or "zero" (no parameter).
      dtype: compute dtype (params are always float32).
      attention_impl: ``nag_jax.models.attention`` implementation: "explicit", "xla", "cudnn", or
        None for the default of the platform traced on (CPU "explicit", else "xla").
      dense_impl: ``nag_jax.models.linear`` implementation of the dense layers' products:
        "transposed_input", "xla", or None for the platform's default (CPU "transposed_input",
        else "xla"). The forward pass is the same in both; the kernel gradients' products differ.
      remat: rematerialise each block in the backward pass (saves activation memory).
      scan_blocks: run the blocks as one ``lax.scan`` over their stacked params (the XLA program
        holds one block instead of ``depth``: faster compiles). The parameter tree is unchanged
        (``blocks_{i}``, what checkpoints and converters use); init always builds it unrolled.
    """

    input_size: int = 32
    patch_size: int = 2
    in_channels: int = 4
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_classes: int = 1000
    learn_sigma: bool = True
    null_noise: str = "learned"
    dtype: Dtype = jnp.float32
    attention_impl: str | None = None
    remat: bool = False
    scan_blocks: bool = False
    dense_impl: str | None = None

    @property
    def out_channels(self) -> int:
        return 2 * self.in_channels if self.learn_sigma else self.in_channels

    @property
    def grid_size(self) -> int:
        return self.input_size // self.patch_size

    @nn.compact
    def embed_time(self, t):
        """(N,) times -> (N, D) timestep embedding (the t_embedder MLP output), float32.

        Callable on its own: ``model.apply({"params": params}, t, method=DiT.embed_time)``
        (NAG fine-tuning averages it into the initial null noise token)."""
        embedder = TimestepEmbedder(
            self.hidden_size, self.dtype, self.dense_impl, name="t_embedder"
        )
        return embedder(t).astype(jnp.float32)

    @nn.compact
    def __call__(self, x, t, y, drop_class=None, drop_noise=None):
        """Runs the network.

        Args:
          x: (N, H, W, C) input (NHWC), H = W = input_size.
          t: (N,) time in the family's convention (SiT float in [0, 1], 1 = data; DiT step
            0..999, 0 = least noise).
          y: (N,) int labels in [0, num_classes).
          drop_class: optional (N,) bool; True -> null class row.
          drop_noise: optional (N,) bool; True -> null noise token instead of the t embedding.

        Returns:
          (N, H, W, out_channels) float32.
        """
        n, h, w, c = x.shape
        if h != self.input_size or w != self.input_size or c != self.in_channels:
            raise ValueError(
                f"Input of shape {x.shape} does not match the model's "
                f"(N, {self.input_size}, {self.input_size}, {self.in_channels})."
            )
        if self.null_noise not in ("learned", "zero"):
            raise ValueError(f"null_noise must be 'learned' or 'zero', got {self.null_noise!r}")
        p = self.patch_size
        x = PatchEmbed(self.hidden_size, p, self.dtype, name="x_embedder")(x)
        pos = get_2d_sincos_pos_embed(self.hidden_size, self.grid_size)
        x = x + jnp.asarray(pos, self.dtype)[None]

        t_emb = self.embed_time(jnp.broadcast_to(t, (n,)))
        if self.null_noise == "learned":
            null = self.param("null_noise_token", normal_002, (self.hidden_size,), jnp.float32)
        else:
            null = jnp.zeros((self.hidden_size,), jnp.float32)
        if drop_noise is not None:
            t_emb = jnp.where(jnp.asarray(drop_noise)[:, None], null[None], t_emb)
        y_emb = LabelEmbedder(self.num_classes, self.hidden_size, self.dtype, name="y_embedder")(
            y, drop_class
        )
        c = (t_emb + y_emb.astype(jnp.float32)).astype(self.dtype)

        if self.scan_blocks and self.depth and not self.is_initializing():
            x = self._scan_blocks(x, c)
        else:
            block_cls = nn.remat(DiTBlock) if self.remat else DiTBlock
            for i in range(self.depth):
                x = block_cls(
                    self.hidden_size,
                    self.num_heads,
                    self.mlp_ratio,
                    self.dtype,
                    self.attention_impl,
                    self.dense_impl,
                    name=f"blocks_{i}",
                )(x, c)
        x = FinalLayer(
            self.hidden_size,
            self.patch_size,
            self.out_channels,
            self.dtype,
            self.dense_impl,
            name="final_layer",
        )(x, c)
        return unpatchify(x.astype(jnp.float32), p, self.grid_size, self.out_channels)

    def _scan_blocks(self, x, c):
        """The ``depth`` blocks as one ``lax.scan`` over ``stack(blocks_0, ..., blocks_{D-1})``.

        Same arithmetic per block as the unrolled loop. The stacked copy of the params is
        loop-invariant in a sampler's step loop; XLA hoists it out (seen in the compiled CPU
        program: the step loop carries the stacked params)."""
        params = self.variables["params"]
        stacked = jax.tree.map(
            lambda *leaves: jnp.stack(leaves),
            *(params[f"blocks_{i}"] for i in range(self.depth)),
        )
        block = DiTBlock(
            self.hidden_size,
            self.num_heads,
            self.mlp_ratio,
            self.dtype,
            self.attention_impl,
            self.dense_impl,
            parent=None,
        )

        def body(h, block_params):
            return block.apply({"params": block_params}, h, c), None

        if self.remat:
            body = jax.checkpoint(body, prevent_cse=False)
        x, _ = jax.lax.scan(body, x, stacked)
        return x


def unpatchify(x, p: int, grid: int, channels: int):
    """(N, T, p*p*C) tokens -> (N, grid*p, grid*p, C), per-token order (p, p, C), C fastest."""
    n = x.shape[0]
    x = x.reshape(n, grid, grid, p, p, channels)
    x = jnp.transpose(x, (0, 1, 3, 2, 4, 5))
    return x.reshape(n, grid * p, grid * p, channels)
