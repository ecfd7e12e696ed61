"""JAX vs the PyTorch releases: sampler and train step side by side, and checkpoint conversion cost.

    python benchmarks/vs_pytorch.py                          # every part, JSON on stdout
    python benchmarks/vs_pytorch.py --part sampler --sampler sde --steps 20 --batch 8
    python benchmarks/vs_pytorch.py --part train --train-sizes S,B --repeats 3 --out train.json
    python benchmarks/vs_pytorch.py --part train --attention default,xla --dense default,xla \
        --cpu-dots default,xla
    python benchmarks/vs_pytorch.py --part attention --train-sizes S
    python benchmarks/vs_pytorch.py --part gemms --train-sizes S,B --out gemms.json
    python benchmarks/vs_pytorch.py --part convert --out /tmp/bench.json

Part "sampler": images/s of the project's jitted sampler (nag_jax.sampling over
nag_jax.guidance.guided_prediction: ONE batched network call per step with all guidance branches)
vs the PyTorch reference sampler written the releases' way (tests/torch_reference.py: the SDE calls
the network twice per step, for the drift and for the score; CFG is ``forward_with_cfg`` on the
doubled batch). Same random weights (converted by nag_jax.convert), same size, steps, guidance,
batch and thread count, measured in one run. JAX compile time is reported separately.

Part "train": seconds per train step of the SiT release's train.py loop (PyTorch: its model,
``transport.training_losses``, AdamW, ``update_ema``) against ``nag_jax.training.step`` (jit, NAG
objective, AdamW, EMA, donated state) on the same work (SiT-S/2 and B/2 at 32x32x4, batch 8,
float32, one thread each by default), interleaved rounds; achieved GFLOP/s (3 forwards per image)
and the fraction of the machine's measured float32 matmul ceiling (`train_side_by_side`).

Part "attention": forward + backward of one attention op (packed qkv in, no projections) for the
project's two JAX implementations (nag_jax.models.attention: "explicit", the CPU default, and
"xla") and torch's ``F.scaled_dot_product_attention`` (the release's kernel), interleaved rounds.

Part "convert": a full-size random SiT-XL/2 state dict (675,129,632 float32 numbers, ~2.7 GB) is
generated and saved in one subprocess; a second subprocess times ``to-orbax`` on it and reports
its peak RSS (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) against the file size (goal:
<= 2.5x); a third times ``to-torch`` back. Needs ~8 GB free disk under --workdir and ~7 GB RAM.

Time conventions: SiT float t in [0, 1] (0 = noise, 1 = data); DiT integer step (0 = least noise).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))


# ---------------------------------------------------------------------------------------------
# Sampler throughput


def bench_sampler(args) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch
    import torch_reference as R

    from nag_jax.convert import create_model_from_metadata
    from nag_jax.convert.to_orbax import state_dict_to_params
    from nag_jax.diffusion.transport import Transport
    from nag_jax.guidance import GuidanceConfig, guided_prediction
    from nag_jax.sampling import sample_ode, sample_sde

    jax.config.update("jax_default_matmul_precision", "highest")
    torch.set_num_threads(args.threads)
    family = "DiT" if args.sampler == "ddpm" else "SiT"
    tm = R.create(
        f"{family}-S/{args.patch}",
        input_size=args.input_size,
        hidden_size=args.hidden,
        depth=args.depth,
        num_heads=args.heads,
        num_classes=1000,
        null_noise_token=args.nag_scale != 0,
    )
    R.rerandomize(tm, 0, scale=0.5).eval()
    sd = {k: v.detach().clone() for k, v in tm.state_dict().items()}
    params, arch, _ = state_dict_to_params(sd, family, num_heads=args.heads)
    fm = create_model_from_metadata(arch.metadata(), attention_impl=args.attention[0])
    params = jax.device_put(params)
    c = 4
    n, s = args.batch, args.input_size
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(n, c, s, s, generator=g)
    y = torch.randint(0, 1000, (n,), generator=g)
    tg = dict(cfg_scale=args.cfg_scale, nag_scale=args.nag_scale)
    guidance = GuidanceConfig(cfg_scale=args.cfg_scale, nag_scale=args.nag_scale)

    def net_fn(x, t, yy, dc, dn):
        out = fm.apply({"params": params}, x, t, yy, drop_class=dc, drop_noise=dn)
        return out[..., :c] if family == "SiT" else out

    if family == "SiT":
        pred_fn = guided_prediction(net_fn, guidance, noise_level_fn=Transport.noise_level)
    else:
        from nag_jax.diffusion.gaussian import create_diffusion

        diffusion = create_diffusion(timestep_respacing=str(args.steps), learn_sigma=True)
        pred_fn = guided_prediction(
            net_fn, guidance, noise_level_fn=diffusion.noise_level, guided_channels=c
        )

    if args.sampler == "sde":
        noise = torch.randn((args.steps - 1, n, c, s, s), generator=g)

        def torch_run():
            return R.sit_euler_maruyama(tm, x0, y, args.steps, noise, **tg)

        jfn = jax.jit(
            lambda k, x, yy: sample_sde(
                pred_fn, k, x, yy, transport=Transport(), num_steps=args.steps
            )
        )
        calls_torch, calls_jax = 2 * (args.steps - 1) + 2, args.steps
    elif args.sampler == "ode":

        def torch_run():
            return R.sit_euler_ode(tm, x0, y, args.steps + 1, **tg)

        jfn = jax.jit(
            lambda k, x, yy: sample_ode(pred_fn, x, yy, transport=Transport(), num_steps=args.steps)
        )
        calls_torch = calls_jax = args.steps
    else:
        from nag_jax.sampling import sample_ddpm

        noise = torch.randn((args.steps, n, c, s, s), generator=g)

        def torch_run():
            return R.dit_ddpm(tm, x0, y, noise, args.steps, **tg)

        jfn = jax.jit(lambda k, x, yy: sample_ddpm(pred_fn, k, x, yy, diffusion=diffusion))
        calls_torch = calls_jax = args.steps

    key = jax.random.key(0)
    xj, yj = jnp.asarray(x0.numpy().transpose(0, 2, 3, 1)), jnp.asarray(y.numpy())
    t0 = time.perf_counter()
    jfn(key, xj, yj).block_until_ready()
    compile_s = time.perf_counter() - t0

    def timed(fn, repeats):
        best = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            best.append(time.perf_counter() - t0)
        return min(best), float(np.median(best))

    # Interleave so that load from other processes on the shared machine hits both alike.
    jt, tt = [], []
    torch_run()  # warm-up
    for _ in range(args.repeats):
        jt.append(timed(lambda: jfn(key, xj, yj).block_until_ready(), 1)[0])
        tt.append(timed(torch_run, 1)[0])
    j_med, t_med = float(np.median(jt)), float(np.median(tt))
    return dict(
        sampler=args.sampler,
        family=family,
        jax_attention=fm.attention_impl,
        model=dict(
            hidden=args.hidden,
            depth=args.depth,
            heads=args.heads,
            patch=args.patch,
            input_size=args.input_size,
            params=int(sum(v.numel() for v in tm.parameters())),
        ),
        batch=n,
        steps=args.steps,
        cfg_scale=args.cfg_scale,
        nag_scale=args.nag_scale,
        threads=args.threads,
        repeats=args.repeats,
        network_calls_per_batch=dict(jax=calls_jax, torch=calls_torch),
        jax_compile_s=round(compile_s, 3),
        jax_s_per_batch=dict(median=round(j_med, 4), min=round(min(jt), 4)),
        torch_s_per_batch=dict(median=round(t_med, 4), min=round(min(tt), 4)),
        jax_images_per_s=round(n / j_med, 3),
        torch_images_per_s=round(n / t_med, 3),
        speedup_jax_over_torch=round(t_med / j_med, 3),
    )


# ---------------------------------------------------------------------------------------------
# Train step, side by side


def _torch_sdpa_attention():
    """The SiT release's attention is timm's ``Attention``, which calls the fused
    ``F.scaled_dot_product_attention`` (timm >= 0.9); tests/torch_reference.py spells it out with
    softmax for readability. Same numbers, the release's kernel."""
    import torch.nn.functional as F

    def forward(self, x):
        b, n, d = x.shape
        hd = d // self.num_heads
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, hd).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(b, n, d))

    return forward


def matmul_ceiling_gflops(n: int = 1024, repeats: int = 5, torch_device=None) -> dict:
    """Measured float32 matmul ceilings (GFLOP/s) of this machine: an n x n x n product through XLA
    (jax, highest precision) and through torch, best of ``repeats`` calls each."""
    import jax
    import jax.numpy as jnp
    import torch

    flop = 2.0 * n**3
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda u, v: jnp.matmul(u, v, precision="highest"))
    f(a, a).block_until_ready()
    best_j = min(_seconds(lambda: f(a, a).block_until_ready()) for _ in range(repeats))
    ta = torch.randn(n, n, device=torch_device)
    _torch_sync(torch_device, ta @ ta)
    best_t = min(_seconds(lambda: _torch_sync(torch_device, ta @ ta)) for _ in range(repeats))
    return dict(n=n, xla=flop / best_j / 1e9, torch=flop / best_t / 1e9)


def _interleaved(fns: dict, repeats: int, after_round=None) -> dict:
    """{label: [seconds of each round]}: ``repeats`` rounds calling every function once, the order
    reversed every other round (no one always runs first); ``after_round()`` after each."""
    times = {label: [] for label in fns}
    for r in range(repeats):
        order = list(fns.items())
        for label, fn in order if r % 2 == 0 else order[::-1]:
            times[label].append(_seconds(fn))
        if after_round is not None:
            after_round()
    return times


def _seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _torch_sync(device, out=None):
    import torch

    if device is not None and str(device).startswith("cuda"):
        torch.cuda.synchronize()
    return out


def train_side_by_side(
    size: str = "S",
    *,
    patch: int = 2,
    batch: int = 8,
    input_size: int = 32,
    steps: int = 3,
    repeats: int = 2,
    overrides: dict | None = None,
    torch_device=None,
    ceiling_n: int = 1024,
    variants: tuple = ({},),
) -> dict:
    """Seconds per train step of the SiT release's loop (PyTorch) and of nag_jax's jitted step on
    the same work: SiT-``size``/``patch`` (or ``overrides`` of hidden_size/depth/num_heads) at
    ``input_size`` x ``input_size`` x 4 latents, 1000 classes, ``batch`` images, float32, AdamW
    (lr 1e-4, wd 0) and an EMA update (0.9999) every step, class and noise-condition dropout 0.1.

    PyTorch, written as the release's train.py loop: ``transport.training_losses`` of the linear
    path (t ~ U[0, 1], x_t = t x1 + (1 - t) x0, target x1 - x0, 0 = noise, 1 = data),
    ``loss.mean()``, ``zero_grad``/``backward``/``AdamW.step``, then ``update_ema`` param by param
    (``mul_(decay).add_(p, alpha=1 - decay)``). The release's model (tests/torch_reference.py, its
    attention through ``F.scaled_dot_product_attention`` as timm's) with the NAG null-noise token.
    JAX: ``nag_jax.training.step.jit_train_step`` with the NAG objective (same sampling of t and
    dropouts), donated state. ``repeats`` interleaved rounds (who goes first alternates) of
    ``steps`` steps each; per framework the best round. FLOPs: 3 forwards per image
    (benchmarks.timing.transformer_forward_flops), against the measured matmul ceilings (best of
    one measurement per round).
    ``variants``: the JAX step once per dict of config overrides
    (``benchmarks.timing.step_variants``: model.attention_impl, nag_jax.models.attention;
    model.dense_impl, nag_jax.models.linear; train.cpu_dot_library, nag_jax.training.step; None
    or absent: the platform's default), each in the same interleaved rounds; the first is the
    headline ``jax_*`` fields, all are under ``jax_variants``, labelled by the choices they
    resolved to."""
    import copy
    import types
    from collections import OrderedDict

    import jax
    import numpy as np
    import torch
    import torch_reference as R

    from benchmarks import timing
    from nag_jax import parallel
    from nag_jax.config.schema import base_config

    arch = dict(R.SIZES[size], **(overrides or {}))
    name = f"SiT-{size}/{patch}"
    # ---- JAX
    config = base_config()
    config.model.update(name=name, input_size=input_size, in_channels=4, num_classes=1000, **arch)
    config.model.update(learn_sigma=True, null_noise="learned", dtype="float32")
    config.optim.update(lr=1e-4, weight_decay=0.0, ema_decay=0.9999)
    config.parallel.fsdp = False
    config.data.global_batch_size = batch
    mesh = parallel.create_mesh(config.parallel, jax.devices()[:1])
    rng = np.random.default_rng(0)
    x1 = rng.standard_normal((batch, input_size, input_size, 4)).astype(np.float32)
    y = rng.integers(0, 1000, batch).astype(np.int32)
    jbatch = parallel.global_batch({"x": x1, "y": y}, mesh)
    compiled = {}  # label (resolved implementations) -> (steps function, compile seconds)
    for variant in variants:
        timing.apply_variant(config, variant)
        jax_steps, compile_s, model = timing.train_steps(config, mesh, jbatch, steps)
        compiled[timing.variant_label(model, config, mesh)] = (jax_steps, compile_s)

    # ---- PyTorch, the release's loop
    dev = torch.device(torch_device or "cpu")
    tm = R.create(name, input_size=input_size, num_classes=1000, null_noise_token=True, **arch)
    sdpa = _torch_sdpa_attention()
    for m in tm.modules():  # timm's fused attention, as the release
        if isinstance(m, R.Attention):
            m.forward = types.MethodType(sdpa, m)
    tm = tm.to(dev).train()
    ema = copy.deepcopy(tm).to(dev)
    for p in ema.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(tm.parameters(), lr=1e-4, weight_decay=0)
    tx1 = torch.from_numpy(x1.transpose(0, 3, 1, 2).copy()).to(dev)
    ty = torch.from_numpy(y.astype(np.int64)).to(dev)

    @torch.no_grad()
    def update_ema(ema_model, model, decay=0.9999):  # the release's train.py
        ema_params = OrderedDict(ema_model.named_parameters())
        for pname, param in model.named_parameters():
            ema_params[pname].mul_(decay).add_(param.data, alpha=1 - decay)

    def training_losses(model, x1, y):  # the release's transport, linear path, velocity
        t = torch.rand(x1.shape[0], device=dev)
        x0 = torch.randn_like(x1)
        tb = t[:, None, None, None]
        xt, ut = tb * x1 + (1 - tb) * x0, x1 - x0
        drop_class = torch.rand(x1.shape[0], device=dev) < 0.1  # LabelEmbedder.token_drop
        drop_noise = torch.rand(x1.shape[0], device=dev) < 0.1  # NAG's null noise condition
        y = torch.where(drop_class, torch.full_like(y, 1000), y)
        out = model(xt, t, y, drop_noise=drop_noise)
        return ((out - ut) ** 2).mean(dim=list(range(1, out.ndim)))

    def torch_steps():
        for _ in range(steps):
            loss = training_losses(tm, tx1, ty).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            update_ema(ema, tm)
        _torch_sync(torch_device)
        return float(loss.detach())

    jax_loss = min(float(jax.device_get(f()["loss"])) for f, _ in compiled.values())  # warm-up
    torch_loss = torch_steps()
    # The ceiling once per round, the best kept: one short measurement on a shared VM can land
    # in a slow moment and make every fraction look too good.
    ceilings = []
    rounds = _interleaved(
        {**{label: f for label, (f, _) in compiled.items()}, "torch": torch_steps},
        repeats,
        lambda: ceilings.append(matmul_ceiling_gflops(ceiling_n, torch_device=torch_device)),
    )
    times = {label: [t / steps for t in v] for label, v in rounds.items()}
    tt = times.pop("torch")
    ceiling = {k: max(c[k] for c in ceilings) for k in ceilings[0]}
    flop = 3 * timing.transformer_forward_flops(model) * batch
    first = next(iter(compiled))
    jt, compile_s = times[first], compiled[first][1]
    j_s, t_s = min(jt), min(tt)
    j_gf, t_gf = flop / j_s / 1e9, flop / t_s / 1e9
    top = max(ceiling["xla"], ceiling["torch"])
    return dict(
        model=name,
        arch=arch,
        input=[input_size, input_size, 4],
        batch=batch,
        dtype="float32",
        steps_per_round=steps,
        repeats=repeats,
        torch_device=str(dev),
        jax_device=jax.devices()[0].device_kind,
        jax_compile_s=round(compile_s, 2),
        gflop_per_step=round(flop / 1e9, 3),
        jax_s_per_step=dict(best=round(j_s, 4), all=[round(v, 4) for v in jt]),
        torch_s_per_step=dict(best=round(t_s, 4), all=[round(v, 4) for v in tt]),
        speedup_jax_over_torch=round(t_s / j_s, 3),
        jax_gflops=round(j_gf, 2),
        torch_gflops=round(t_gf, 2),
        matmul_ceiling_gflops={k: round(v, 2) if k != "n" else v for k, v in ceiling.items()},
        jax_fraction_of_ceiling=round(j_gf / top, 3),
        torch_fraction_of_ceiling=round(t_gf / top, 3),
        losses_finite=bool(np.isfinite(jax_loss) and np.isfinite(torch_loss)),
        jax_variant=first,
        jax_variants={
            label: dict(
                compile_s=round(compiled[label][1], 2),
                s_per_step=dict(best=round(min(v), 4), all=[round(x, 4) for x in v]),
                speedup_over_torch=round(t_s / min(v), 3),
                fraction_of_ceiling=round(flop / min(v) / 1e9 / top, 3),
            )
            for label, v in times.items()
        },
    )


def bench_attention(args) -> dict:
    """Forward + backward of one attention op (packed qkv -> output, no projections) per
    implementation: the project's "explicit" (custom JVP) and "xla" (autodiff of
    jax.nn.dot_product_attention), and torch's ``F.scaled_dot_product_attention`` (the release's
    kernel through timm). SiT-``--train-sizes``' first size's heads at ``--train-input-size``
    tokens (patch 2), batch ``--train-batch``; interleaved rounds, best per implementation."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch
    import torch.nn.functional as F
    import torch_reference as R

    from nag_jax.models.attention import attention

    size = args.train_sizes.split(",")[0]
    arch = R.SIZES[size]
    heads, hd = arch["num_heads"], arch["hidden_size"] // arch["num_heads"]
    n, t = args.train_batch, (args.train_input_size // 2) ** 2
    rng = np.random.default_rng(0)
    qkv = rng.standard_normal((n, t, 3, heads, hd)).astype(np.float32)
    g = rng.standard_normal((n, t, heads, hd)).astype(np.float32)
    jq, jg = jnp.asarray(qkv), jnp.asarray(g)
    fns = {}
    for impl in ("explicit", "xla"):
        f = jax.jit(jax.grad(lambda a, impl=impl: jnp.sum(attention(a, impl) * jg)))
        f(jq).block_until_ready()
        fns[f"jax {impl}"] = lambda f=f: f(jq).block_until_ready()
    tq = torch.from_numpy(qkv.transpose(2, 0, 3, 1, 4).copy())  # (3, N, heads, T, hd)
    tg = torch.from_numpy(g.transpose(0, 2, 1, 3).copy())

    def torch_run():
        q, k, v = (tq[i].clone().requires_grad_(True) for i in range(3))
        (F.scaled_dot_product_attention(q, k, v) * tg).sum().backward()

    torch_run()
    fns["torch sdpa"] = torch_run
    times = _interleaved(fns, max(5, args.repeats))
    flop = 6 * 2.0 * n * heads * t * t * hd  # QK^T and PV forward, four such matmuls backward
    return dict(
        what="forward + backward of one attention op (no projections), float32",
        size=size,
        batch=n,
        tokens=t,
        heads=heads,
        head_dim=hd,
        threads=args.threads,
        ms={k: round(min(v) * 1e3, 2) for k, v in times.items()},
        all_ms={k: [round(x * 1e3, 2) for x in v] for k, v in times.items()},
        gflop=round(flop / 1e9, 3),
    )


def bench_gemms(args) -> dict:
    """The train step's dense matmuls alone, at their own shapes: per SiT size of
    ``--train-sizes`` (batch ``--train-batch``, patch 2), the four weight GEMMs of a block (qkv,
    proj, fc1, fc2: M = batch x tokens rows) forward (M x K . K x N) and their two backward
    products (dX = dY . W^T: M x N . N x K; dW = X^T . dY: K x M . M x N), each jitted alone
    (highest precision) and through torch, best of ``max(5, --repeats)`` interleaved rounds.
    The FLOP-weighted GFLOP/s of the set is the ceiling a step made only of these products could
    reach here, beside the square n x n x n ceiling the train part divides by."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch
    import torch_reference as R

    torch.set_num_threads(args.threads)
    out = {"threads": args.threads, "square": matmul_ceiling_gflops(), "sizes": {}}
    rng = np.random.default_rng(0)
    for size in args.train_sizes.split(","):
        d = R.SIZES[size]["hidden_size"]
        m = args.train_batch * (args.train_input_size // 2) ** 2
        shapes = []
        for name, k, n in (("qkv", d, 3 * d), ("proj", d, d), ("fc1", d, 4 * d), ("fc2", 4 * d, d)):
            shapes += [(f"{name} fwd", m, k, n), (f"{name} dX", m, n, k), (f"{name} dW", k, m, n)]
        fns, flops = {}, {}
        for label, a, b, c in shapes:
            x = rng.standard_normal((a, b)).astype(np.float32)
            w = rng.standard_normal((b, c)).astype(np.float32)
            jx, jw, tx, tw = (
                jnp.asarray(x),
                jnp.asarray(w),
                torch.from_numpy(x),
                torch.from_numpy(w),
            )
            f = jax.jit(lambda u, v: jnp.matmul(u, v, precision="highest"))
            f(jx, jw).block_until_ready()
            fns[f"jax {label}"] = lambda f=f, jx=jx, jw=jw: f(jx, jw).block_until_ready()
            fns[f"torch {label}"] = lambda tx=tx, tw=tw: tx @ tw
            flops[label] = 2.0 * a * b * c
        times = {k: min(v) for k, v in _interleaved(fns, max(5, args.repeats)).items()}
        row = {"rows_m": m, "hidden": d}
        for fw in ("jax", "torch"):
            total_t = sum(times[f"{fw} {lb}"] for lb in flops)
            row[f"{fw}_gflops_weighted"] = round(sum(flops.values()) / total_t / 1e9, 1)
            row[f"{fw}_gflops"] = {
                lb: round(fl / times[f"{fw} {lb}"] / 1e9, 1) for lb, fl in flops.items()
            }
        out["sizes"][size] = row
    return out


def bench_train(args) -> list[dict]:
    import torch

    from benchmarks import timing

    torch.set_num_threads(args.threads)
    return [
        train_side_by_side(
            size,
            batch=args.train_batch,
            input_size=args.train_input_size,
            steps=args.train_steps,
            repeats=args.repeats,
            variants=tuple(timing.step_variants(args.attention, args.dense, args.cpu_dots)),
        )
        for size in args.train_sizes.split(",")
    ]


# ---------------------------------------------------------------------------------------------
# Conversion time and memory (subprocesses)

_GEN = r"""
import sys, time, torch
sys.path.insert(0, {tests!r})
import torch_reference as R
with torch.device("meta"):
    m = R.create("SiT-XL/2")
g = torch.Generator().manual_seed(0)
sd = {{}}
for k, v in m.state_dict().items():
    if k == "pos_embed":
        sd[k] = torch.from_numpy(R.sincos_pos_embed(v.shape[-1], 16)).float()[None]
    else:
        sd[k] = torch.randn(v.shape, generator=g) * 0.02
torch.save(sd, {path!r})
print(sum(v.numel() for v in sd.values()))
"""

_CONVERT = r"""
import json, resource, sys, time
sys.path.insert(0, {root!r})
t0 = time.perf_counter()
from nag_jax.convert import to_orbax
import torch, orbax.checkpoint, jax  # imports counted apart from the conversion
t_imp = time.perf_counter() - t0
rss_imports = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
t0 = time.perf_counter()
to_orbax.convert({src!r}, {dest!r}, "SiT", model="SiT-XL/2")  # what the CLI runs
print(json.dumps(dict(import_s=t_imp, convert_s=time.perf_counter() - t0,
                      peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                      rss_after_imports_bytes=rss_imports)))
"""

_EXPORT = r"""
import json, resource, sys, time
sys.path.insert(0, {root!r})
from nag_jax.convert import to_torch
t0 = time.perf_counter()
to_torch.export({src!r}, {dest!r})
print(json.dumps(dict(export_s=time.perf_counter() - t0,
                      peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)))
"""


def _run(code: str) -> str:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
    )
    if out.returncode:
        raise RuntimeError(f"subprocess failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return out.stdout.strip().splitlines()[-1]


def bench_convert(args) -> dict:
    work = tempfile.mkdtemp(prefix="nag_convert_bench_", dir=args.workdir)
    try:
        src = os.path.join(work, "sit_xl2_random.pt")
        t0 = time.perf_counter()
        numel = int(_run(_GEN.format(tests=os.path.join(ROOT, "tests"), path=src)))
        gen_s = time.perf_counter() - t0
        size = os.path.getsize(src)
        conv = json.loads(_run(_CONVERT.format(root=ROOT, src=src, dest=os.path.join(work, "o"))))
        back = os.path.join(work, "back.pt")
        exp = json.loads(_run(_EXPORT.format(root=ROOT, src=os.path.join(work, "o"), dest=back)))
        # Bit-exactness of the round trip on the full-size file (tensor by tensor, mmap).
        code = (
            f"import torch; a = torch.load({src!r}, mmap=True, weights_only=True); "
            f"b = torch.load({back!r}, mmap=True, weights_only=True); "
            "print(int(list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)))"
        )
        exact = _run(code) == "1"
        return dict(
            model="SiT-XL/2 (random weights)",
            numel=numel,
            checkpoint_bytes=size,
            generate_s=round(gen_s, 2),
            to_orbax=dict(
                {k: round(v, 2) for k, v in conv.items() if k.endswith("_s")},
                peak_rss_bytes=conv["peak_rss_bytes"],
                peak_rss_over_checkpoint=round(conv["peak_rss_bytes"] / size, 3),
                rss_after_imports_bytes=conv["rss_after_imports_bytes"],
            ),
            to_torch=dict(
                export_s=round(exp["export_s"], 2),
                peak_rss_bytes=exp["peak_rss_bytes"],
                peak_rss_over_checkpoint=round(exp["peak_rss_bytes"] / size, 3),
            ),
            round_trip_bit_exact=exact,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _choices(value: str) -> list:
    """A comma list of implementation names, "default" read as None (the platform's)."""
    return [None if x == "default" else x for x in value.split(",")]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--part",
        choices=["all", "sampler", "train", "attention", "gemms", "convert"],
        default="all",
    )
    p.add_argument("--sampler", choices=["sde", "ode", "ddpm"], default="sde")
    p.add_argument("--steps", type=int, default=10, help="SDE: grid points (release num_steps)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--cfg-scale", type=float, default=4.0)
    p.add_argument("--nag-scale", type=float, default=0.0)
    p.add_argument("--hidden", type=int, default=384, help="384/12/6 = the S size")
    p.add_argument("--depth", type=int, default=6)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--patch", type=int, default=2)
    p.add_argument("--input-size", type=int, default=16)
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="intra-op threads for BOTH frameworks (1 = fair and stable on a shared machine: "
        "torch's spinning worker threads lose 3x+ under oversubscription)",
    )
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds (sampler, train)")
    p.add_argument("--train-sizes", default="S,B", help="part train: SiT sizes, patch 2")
    p.add_argument("--train-batch", type=int, default=8)
    p.add_argument("--train-input-size", type=int, default=32)
    p.add_argument("--train-steps", type=int, default=5, help="part train: steps per round")
    p.add_argument(
        "--attention",
        default=[None],
        type=_choices,
        help="part train: JAX attention implementations to time side by side (comma list of "
        "default/explicit/xla; the first is the headline); part sampler: the first one",
    )
    p.add_argument(
        "--dense",
        default=[None],
        type=_choices,
        help="part train: JAX dense-layer implementations (nag_jax.models.linear) to time side by "
        "side, comma list of default/transposed_input/xla, each with the first --attention",
    )
    p.add_argument(
        "--cpu-dots",
        default=[None],
        type=_choices,
        help="part train: train.cpu_dot_library choices (default/onednn/xla) side by side",
    )
    p.add_argument("--workdir", default=tempfile.gettempdir(), help="scratch for part convert")
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    if args.threads == 1 and "jax" not in sys.modules:  # XLA's CPU thread pool, before import
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "")
            + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        ).strip()
    import platform

    result = dict(
        host=dict(
            machine=platform.machine(), cpus=os.cpu_count(), python=platform.python_version()
        ),
        time_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    if args.part in ("all", "sampler"):
        result["sampler"] = bench_sampler(args)
    if args.part in ("all", "train"):
        result["train"] = bench_train(args)
    if args.part in ("all", "attention"):
        result["attention"] = bench_attention(args)
    if args.part in ("all", "gemms"):
        result["gemms"] = bench_gemms(args)
    if args.part in ("all", "convert"):
        result["convert"] = bench_convert(args)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
