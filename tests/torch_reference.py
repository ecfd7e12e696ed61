"""PyTorch reference of the DiT / SiT releases, written from /work/shared/reference facts.

Used only by the converter and parity tests and by benchmarks/vs_pytorch.py (torch CPU). It
reproduces the releases' module names (so ``state_dict()`` has the releases' key layout, pos_embed
included), their initialisation, ``forward_with_cfg`` with the legacy 3-channel CFG, and sampling
loops written the way the releases run them:

- SiT Euler ODE (fixed grid ``linspace(0, 1, num_steps)`` -> ``num_steps - 1`` Euler steps, one
  guided call per step, as torchdiffeq's fixed-grid "euler" does on the release's grid).
- SiT Euler-Maruyama SDE, diffusion form "sigma" (w(t) = 1 - t), grid ``linspace(0, 1 - 0.04,
  num_steps)`` -> ``num_steps - 1`` stochastic steps, then the deterministic "Mean" last step
  ``x + 0.04 * drift(x, 0.96)``. TWO guided network calls per step (drift and score), as released.
- SiT adaptive ODE (``sit_sample_ode``: torchdiffeq dopri5, atol 1e-6, rtol 1e-3 on the grid
  ``linspace(0, 1, num_steps)``, the last saved state is the sample) and its likelihood
  (``sit_sample_ode_likelihood``: data -> noise in s = 1 - t with the divergence of the
  velocity, ``logp = log N(z) - delta``), written the way the release's ``sample_ode`` /
  ``sample_ode_likelihood`` call torchdiffeq (tolerances as one-element lists, tuple state).
- DiT DDPM ancestral sampling over respaced steps (learned-range variance, no clipping, no noise at
  the last step), the net sees the original step index.

Time conventions: SiT float t in [0, 1] with t = 0 NOISE and t = 1 DATA; DiT integer step 0..999
(fed as float), 0 = least noise. Tensors here are NCHW (PyTorch); the JAX side is NHWC.

Not part of the releases: an optional ``null_noise_token`` parameter (D,) that replaces the whole
timestep embedding for rows with ``drop_noise`` (NAG's noise-unconditional branch), so NAG
guidance can be checked against the JAX model too. ``forward`` without ``drop_noise`` is exactly
the release's.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

SIZES = {
    "XL": dict(depth=28, hidden_size=1152, num_heads=16),
    "L": dict(depth=24, hidden_size=1024, num_heads=16),
    "B": dict(depth=12, hidden_size=768, num_heads=12),
    "S": dict(depth=12, hidden_size=384, num_heads=6),
}


# ----------------------------------------------------------------------------------------------
# Fixed embeddings (float64 numpy, as the releases compute them)


def _sincos_1d(embed_dim: int, pos: np.ndarray) -> np.ndarray:
    omega = np.arange(embed_dim // 2, dtype=np.float64)
    omega /= embed_dim / 2.0
    omega = 1.0 / 10000**omega
    out = np.einsum("m,d->md", pos.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_pos_embed(embed_dim: int, grid_size: int) -> np.ndarray:
    """(grid*grid, D) float64; first D/2 channels encode the column, second D/2 the row."""
    gy, gx = np.meshgrid(np.arange(grid_size), np.arange(grid_size), indexing="ij")
    return np.concatenate([_sincos_1d(embed_dim // 2, gx), _sincos_1d(embed_dim // 2, gy)], axis=1)


def timestep_embedding(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0):
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


# ----------------------------------------------------------------------------------------------
# Modules (names mirror the releases)


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden_size: int, freq_size: int = 256):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(freq_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )
        self.freq_size = freq_size

    def forward(self, t):
        return self.mlp(timestep_embedding(t, self.freq_size))


class LabelEmbedder(nn.Module):
    def __init__(self, num_classes: int, hidden_size: int):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + 1, hidden_size)  # row num_classes = null

    def forward(self, y):
        return self.embedding_table(y)


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, in_ch: int, hidden: int):
        super().__init__()
        self.proj = nn.Conv2d(in_ch, hidden, kernel_size=patch, stride=patch, bias=True)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)  # (N, T, D), row-major tokens


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        hd = d // self.num_heads
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, hd).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * hd**-0.5) @ k.transpose(-2, -1)
        out = attn.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


def modulate(x, shift, scale):
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class DiTBlock(nn.Module):
    def __init__(self, hidden: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden, heads)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden, int(hidden * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))

    def forward(self, x, c):
        sh_msa, sc_msa, g_msa, sh_mlp, sc_mlp, g_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + g_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), sh_msa, sc_msa))
        x = x + g_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), sh_mlp, sc_mlp))
        return x


class FinalLayer(nn.Module):
    def __init__(self, hidden: int, patch: int, out_ch: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden, patch * patch * out_ch)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class DiT(nn.Module):
    """The releases' backbone. ``family`` "SiT" returns only the first C channels (velocity)."""

    def __init__(
        self,
        family: str = "DiT",
        input_size: int = 32,
        patch_size: int = 2,
        in_channels: int = 4,
        hidden_size: int = 1152,
        depth: int = 28,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        num_classes: int = 1000,
        learn_sigma: bool = True,
        null_noise_token: bool = False,
    ):
        super().__init__()
        assert family in ("DiT", "SiT"), family
        self.family = family
        self.in_channels = in_channels
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.learn_sigma = learn_sigma
        self.patch_size = patch_size
        self.num_classes = num_classes
        self.x_embedder = PatchEmbed(patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size)
        num_patches = (input_size // patch_size) ** 2
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches, hidden_size), requires_grad=False)
        self.blocks = nn.ModuleList(
            [DiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth)]
        )
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        if null_noise_token:
            self.null_noise_token = nn.Parameter(torch.zeros(hidden_size))
        else:
            self.null_noise_token = None
        self.initialize_weights(input_size // patch_size)

    def initialize_weights(self, grid: int):
        def _basic_init(m):
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0)

        self.apply(_basic_init)
        pe = sincos_pos_embed(self.pos_embed.shape[-1], grid)
        self.pos_embed.data.copy_(torch.from_numpy(pe).float().unsqueeze(0))
        w = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(w.view([w.shape[0], -1]))
        nn.init.constant_(self.x_embedder.proj.bias, 0)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:
            nn.init.constant_(block.adaLN_modulation[-1].weight, 0)
            nn.init.constant_(block.adaLN_modulation[-1].bias, 0)
        for p in (
            self.final_layer.adaLN_modulation[-1].weight,
            self.final_layer.adaLN_modulation[-1].bias,
            self.final_layer.linear.weight,
            self.final_layer.linear.bias,
        ):
            nn.init.constant_(p, 0)

    def unpatchify(self, x):
        c, p = self.out_channels, self.patch_size
        h = w = int(x.shape[1] ** 0.5)
        x = x.reshape(x.shape[0], h, w, p, p, c)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(x.shape[0], c, h * p, w * p)

    def forward(self, x, t, y, drop_noise=None):
        """x (N, C, H, W), t (N,) family convention, y (N,) int64 (num_classes = null)."""
        x = self.x_embedder(x) + self.pos_embed
        t_emb = self.t_embedder(t)
        if drop_noise is not None:
            if self.null_noise_token is None:
                raise ValueError("drop_noise given but the model has no null_noise_token")
            t_emb = torch.where(drop_noise[:, None], self.null_noise_token[None], t_emb)
        c = t_emb + self.y_embedder(y)
        for block in self.blocks:
            x = block(x, c)
        x = self.unpatchify(self.final_layer(x, c))
        if self.family == "SiT" and self.learn_sigma:
            x, _ = x.chunk(2, dim=1)
        return x

    def forward_with_cfg(self, x, t, y, cfg_scale, cfg_channels=3):
        """The releases' CFG: the batch is [cond; uncond] halves, only the first half of ``x`` is
        used, channels [0, cfg_channels) are guided as u + s (c - u), the rest from each half."""
        half = x[: len(x) // 2]
        combined = torch.cat([half, half], dim=0)
        out = self.forward(combined, t, y)
        eps, rest = out[:, :cfg_channels], out[:, cfg_channels:]
        cond, uncond = torch.split(eps, len(eps) // 2, dim=0)
        half_eps = uncond + cfg_scale * (cond - uncond)
        return torch.cat([torch.cat([half_eps, half_eps], dim=0), rest], dim=1)


def create(name: str, **kw) -> DiT:
    """``create("SiT-XL/2", input_size=32, ...)`` with the releases' sizes."""
    family, rest = name.split("-", 1)
    size, patch = rest.split("/")
    cfg = dict(SIZES[size])
    cfg.update(kw)
    return DiT(family=family, patch_size=int(patch), **cfg)


@torch.no_grad()
def rerandomize(model: nn.Module, seed: int = 0, scale: float = 1.0) -> nn.Module:
    """Fills every trainable parameter with random values so outputs are nonzero.

    Matrices get N(0, 1/fan_in) (keeps activations O(1) through depth), vectors N(0, 0.1^2),
    the label table N(0, 0.5^2). pos_embed (fixed sin-cos, not trained) is left as it is.
    """
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name == "pos_embed":
            continue
        if name.endswith("embedding_table.weight"):
            std = 0.5
        elif p.ndim >= 2:
            std = 1.0 / math.sqrt(p[0].numel())
        else:
            std = 0.1
        p.copy_(torch.randn(p.shape, generator=g) * std * scale)
    return model


# ----------------------------------------------------------------------------------------------
# Guided predictions (release style)


def guided(model, x, t, y, cfg_scale=1.0, cfg_channels=None, nag_scale=0.0):
    """Guided prediction for N samples, NCHW.

    cfg_scale == 1 and nag_scale == 0: one plain forward (the releases' no-guidance path).
    CFG only: the releases' ``forward_with_cfg`` on the doubled batch [x; x], labels [y; null]
    (cfg_channels None = all channels of the prediction). With NAG: a third branch with the null
    noise token, combined as c + (s - 1)(c - u_y) + w (c - u_t) on the guided channels.
    """
    n = x.shape[0]
    tt = torch.full((n,), float(t)) if not torch.is_tensor(t) or t.ndim == 0 else t
    if cfg_scale == 1.0 and nag_scale == 0.0:
        return model(x, tt, y)
    c_out = model.in_channels
    if nag_scale == 0.0:
        k = c_out if cfg_channels is None else cfg_channels
        null = torch.full_like(y, model.num_classes)
        out = model.forward_with_cfg(
            torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([y, null]), cfg_scale, k
        )
        return out[:n]
    # NAG (not in the releases): explicit three-branch combination.
    k = c_out if cfg_channels is None else cfg_channels
    null = torch.full_like(y, model.num_classes)
    xs, ts = torch.cat([x, x, x]), torch.cat([tt, tt, tt])
    ys = torch.cat([y, null, y])
    dn = torch.cat([torch.zeros(2 * n, dtype=torch.bool), torch.ones(n, dtype=torch.bool)])
    out = model(xs, ts, ys, drop_noise=dn)
    c, uy, ut = out[:n], out[n : 2 * n], out[2 * n :]
    g = c[:, :k] + (cfg_scale - 1.0) * (c[:, :k] - uy[:, :k]) + nag_scale * (c[:, :k] - ut[:, :k])
    return torch.cat([g, c[:, k:]], dim=1)


# ----------------------------------------------------------------------------------------------
# SiT samplers (Linear path, velocity prediction; t = 0 noise, t = 1 data)


@torch.no_grad()
def sit_euler_ode(model, x, y, num_steps, return_trajectory=False, **guidance):
    """Release grid ``t = linspace(0, 1, num_steps)``; x_{k+1} = x_k + dt * v(x_k, t_k)."""
    ts = torch.linspace(0.0, 1.0, num_steps)
    traj = [x]
    for i in range(num_steps - 1):
        dt = ts[i + 1] - ts[i]
        v = guided(model, x, ts[i], y, **guidance)
        x = x + dt * v
        traj.append(x)
    return torch.stack(traj) if return_trajectory else x


def _score_from_velocity(v, x, t):
    # Linear path: alpha = t, sigma = 1 - t -> score = (t v - x) / (1 - t).
    return (t * v - x) / (1.0 - t)


@torch.no_grad()
def sit_euler_maruyama(
    model, x, y, num_steps, noise, last_step_size=0.04, return_trajectory=False, **guidance
):
    """The release's SDE sampler, diffusion form "sigma" (w(t) = 1 - t), "Mean" last step.

    noise: (num_steps - 1, N, C, H, W) standard normals, noise[k] used at step k.
    Two guided calls per step (drift's velocity, then the score's velocity), as the release.
    """
    ts = torch.linspace(0.0, 1.0 - last_step_size, num_steps)
    dt = ts[1] - ts[0]

    def drift(x, t):
        v = guided(model, x, t, y, **guidance)  # call 1: drift
        s = _score_from_velocity(guided(model, x, t, y, **guidance), x, t)  # call 2: score
        return v + (1.0 - t) * s

    traj = [x]
    for k, t in enumerate(ts[:-1]):
        mean_x = x + drift(x, t) * dt
        x = mean_x + torch.sqrt(2.0 * (1.0 - t)) * noise[k] * torch.sqrt(dt)
        traj.append(x)
    x = x + drift(x, ts[-1]) * last_step_size  # "Mean" last step
    traj.append(x)
    return torch.stack(traj) if return_trajectory else x


@torch.no_grad()
def sit_sample_ode(model, x, y, num_steps=50, atol=1e-6, rtol=1e-3, method="dopri5", **guidance):
    """The release's ``sample_ode`` (Linear path, velocity): ``odeint`` on
    ``linspace(0, 1, num_steps)``; returns (the last state, number of function evaluations)."""
    from torchdiffeq import odeint

    nfe = [0]

    def fn(t, x):
        nfe[0] += 1
        return guided(model, x, torch.ones(x.size(0)) * t, y, **guidance)

    ts = torch.linspace(0.0, 1.0, num_steps)
    out = odeint(fn, x, ts, method=method, atol=[atol], rtol=[rtol])
    return out[-1], nfe[0]


def sit_sample_ode_likelihood(
    model, x, y, num_steps=50, atol=1e-6, rtol=1e-3, eps=None, exact=False, **guidance
):
    """The release's ``sample_ode_likelihood``: state (x, logp) from data (s = 0, t = 1) to noise;
    ``d x/ds = -v(x, 1 - s)``, ``d logp/ds = div v`` by Hutchinson ``sum(grad(sum(v eps)) eps)``
    (autograd), ``logp(x) = log N(z; 0, I) - delta``.

    eps: None = a fresh Rademacher probe at every evaluation (the release); a fixed tensor
    (N, C, H, W) = that probe throughout. exact: the Jacobian trace (batched vjps) instead.
    Returns (logp (N,), z (N, C, H, W), number of function evaluations).
    """
    from torchdiffeq import odeint

    nfe = [0]

    def fn(s, state):
        x, _ = state
        nfe[0] += 1
        t = torch.ones(x.size(0)) * (1.0 - s)
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            v = guided(model, x, t, y, **guidance)
            if exact:
                d = x[0].numel()
                basis = torch.eye(d).reshape(d, 1, *x.shape[1:]).expand(d, *x.shape)
                (jac,) = torch.autograd.grad(v, x, basis, is_grads_batched=True)
                div = torch.einsum("jnd,jd->n", jac.reshape(d, x.size(0), d), torch.eye(d))
            else:
                e = eps if eps is not None else torch.randint(2, x.size()).float() * 2 - 1
                (g,) = torch.autograd.grad(torch.sum(v * e), x)
                div = torch.sum(g * e, dim=tuple(range(1, x.dim())))
        return (-v.detach(), div.detach())

    ts = torch.linspace(0.0, 1.0, num_steps)
    state = (x, torch.zeros(x.size(0)))
    zs, deltas = odeint(fn, state, ts, method="dopri5", atol=[atol] * 2, rtol=[rtol] * 2)
    z, delta = zs[-1], deltas[-1]
    d = z[0].numel()
    prior = -d / 2.0 * math.log(2 * math.pi) - torch.sum(z.reshape(z.size(0), -1) ** 2, -1) / 2
    return prior - delta, z, nfe[0]


# ----------------------------------------------------------------------------------------------
# DiT DDPM (float64 schedule, coefficients extracted to float32 as the release does)


def space_timesteps(num_timesteps: int, count: int) -> list[int]:
    """The release's ``space_timesteps(T, str(count))`` for one section."""
    if count == 1:
        return [0]
    stride = (num_timesteps - 1) / (count - 1)
    cur, out = 0.0, []
    for _ in range(count):
        out.append(round(cur))
        cur += stride
    return out


class RespacedDDPM:
    def __init__(self, num_sampling_steps=250, num_timesteps=1000):
        betas = np.linspace(1e-4, 0.02, num_timesteps, dtype=np.float64)
        acp_full = np.cumprod(1.0 - betas)
        use = set(space_timesteps(num_timesteps, num_sampling_steps))
        new_betas, self.timestep_map, last = [], [], 1.0
        for i, a in enumerate(acp_full):
            if i in use:
                new_betas.append(1 - a / last)
                last = a
                self.timestep_map.append(i)
        b = np.array(new_betas, dtype=np.float64)
        self.betas = b
        self.num_steps = len(b)
        alphas = 1.0 - b
        acp = np.cumprod(alphas)
        acp_prev = np.append(1.0, acp[:-1])
        post_var = b * (1.0 - acp_prev) / (1.0 - acp)
        self.post_log_var_clipped = np.log(np.append(post_var[1], post_var[1:]))
        self.coef1 = b * np.sqrt(acp_prev) / (1.0 - acp)
        self.coef2 = (1.0 - acp_prev) * np.sqrt(alphas) / (1.0 - acp)
        self.sqrt_recip_acp = np.sqrt(1.0 / acp)
        self.sqrt_recipm1_acp = np.sqrt(1.0 / acp - 1)
        self.log_betas = np.log(b)

    @staticmethod
    def _ex(arr, i):
        return torch.tensor(arr[i]).float()  # the release: th.from_numpy(arr)[t].float()

    def p_sample(self, out, x, i, noise):
        c = x.shape[1]
        eps, v = out[:, :c], out[:, c:]
        min_log, max_log = self._ex(self.post_log_var_clipped, i), self._ex(self.log_betas, i)
        frac = (v + 1) / 2
        log_var = frac * max_log + (1 - frac) * min_log
        x0 = self._ex(self.sqrt_recip_acp, i) * x - self._ex(self.sqrt_recipm1_acp, i) * eps
        mean = self._ex(self.coef1, i) * x0 + self._ex(self.coef2, i) * x
        nonzero = float(i != 0)
        return mean + nonzero * torch.exp(0.5 * log_var) * noise


@torch.no_grad()
def dit_ddpm(model, x, y, noise, num_sampling_steps=250, return_trajectory=False, **guidance):
    """Ancestral loop over respaced indices S-1..0; noise: (S, N, C, H, W), noise[k] at loop
    iteration k (respaced index S-1-k; the last one is multiplied by zero)."""
    d = RespacedDDPM(num_sampling_steps)
    traj = [x]
    for k, i in enumerate(reversed(range(d.num_steps))):
        t = torch.full((x.shape[0],), float(d.timestep_map[i]))
        out = guided(model, x, t, y, **guidance)
        x = d.p_sample(out, x, i, noise[k])
        traj.append(x)
    return torch.stack(traj) if return_trajectory else x
