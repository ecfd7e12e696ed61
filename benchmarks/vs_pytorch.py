"""JAX vs the PyTorch releases: sampler throughput side by side, and checkpoint conversion cost.

    python benchmarks/vs_pytorch.py                          # both parts, JSON on stdout
    python benchmarks/vs_pytorch.py --part sampler --sampler sde --steps 20 --batch 8
    python benchmarks/vs_pytorch.py --part convert --out /tmp/bench.json

Part "sampler": images/s of the project's jitted sampler (nag_jax.sampling over
nag_jax.guidance.guided_prediction: ONE batched network call per step with all guidance branches)
vs the PyTorch reference sampler written the releases' way (tests/torch_reference.py: the SDE calls
the network twice per step, for the drift and for the score; CFG is ``forward_with_cfg`` on the
doubled batch). Same random weights (converted by nag_jax.convert), same size, steps, guidance,
batch and thread count, measured in one run. JAX compile time is reported separately.

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
    fm = create_model_from_metadata(arch.metadata())
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=["all", "sampler", "convert"], default="all")
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
    p.add_argument("--repeats", type=int, default=3)
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
