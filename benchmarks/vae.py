"""SD-VAE throughput: the Flax port (nag_jax.models.vae) decoding / encoding, JSON on stdout.

    python benchmarks/vae.py                                  # decode 8 x (32, 32, 4) latents
    python benchmarks/vae.py --mode both --batch 8 --dtype bfloat16 --chunk-size 4
    python benchmarks/vae.py --torch --out /tmp/vae_bench.json  # + PyTorch, same weights

Full-size SD-VAE (default config: block_out_channels (128, 256, 512, 512), 83.65M params) with
random weights; latents (N, 32, 32, 4) decode to 256x256 images. Reports JAX compile time
separately, then the best and median wall time of ``--repeats`` timed calls (after ``--warmup``),
images/s from the median, and the process CPU seconds per call (on a shared machine wall time
includes waiting for cores; CPU time does not). ``--torch`` also times the PyTorch reference
(diffusers' AutoencoderKL if importable, else tests/vae_torch_reference.py) on the same weights
with torch's intra-op thread count, and reports the max relative difference of the outputs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from benchmarks import timing  # noqa: E402


def _time(fn, repeats: int):
    t = timing.time_calls(fn, repeats, warmup=0)
    return t.walls, t.cpus


def _summary(walls, cpus, batch):
    return timing.Timing(walls, cpus).summary(batch)


def run(args) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from nag_jax.models.vae import AutoencoderKL

    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[args.dtype]
    vae = AutoencoderKL(getattr(args, "vae_config", None), dtype=dtype, chunk_size=args.chunk_size)
    t0 = time.perf_counter()
    params = jax.jit(lambda k: vae.init(k, image_size=8))(jax.random.key(args.seed))
    params = jax.block_until_ready(params)
    init_s = time.perf_counter() - t0
    f = vae.config.downsample_factor
    rng = np.random.RandomState(args.seed)
    z = jnp.asarray(rng.randn(args.batch, args.latent_size, args.latent_size, 4).astype(np.float32))
    size = args.latent_size * f
    x = jnp.asarray(rng.uniform(-1, 1, (args.batch, size, size, 3)).astype(np.float32))

    result = {
        "benchmark": "vae",
        "device": str(jax.devices()[0]),
        "backend": jax.default_backend(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "dtype": args.dtype,
        "batch": args.batch,
        "latent_shape": [args.latent_size, args.latent_size, 4],
        "image_shape": [size, size, 3],
        "chunk_size": args.chunk_size,
        "params": int(sum(np.prod(p.shape) for p in jax.tree.leaves(params))),
        "init_s": round(init_s, 2),
        "repeats": args.repeats,
        "warmup": args.warmup,
    }
    outs = {}
    if args.mode in ("decode", "both"):
        t0 = time.perf_counter()
        compiled = vae.decode.lower(params, z).compile()
        result["decode_compile_s"] = round(time.perf_counter() - t0, 2)
        for _ in range(args.warmup):
            outs["decode"] = jax.block_until_ready(compiled(params, z))
        walls, cpus = _time(
            lambda: outs.__setitem__("decode", jax.block_until_ready(compiled(params, z))),
            args.repeats,
        )
        result["decode"] = _summary(walls, cpus, args.batch)
    if args.mode in ("encode", "both"):
        key = jax.random.key(1)
        t0 = time.perf_counter()
        compiled = vae.encode.lower(params, x, key=key).compile()
        result["encode_compile_s"] = round(time.perf_counter() - t0, 2)
        for _ in range(args.warmup):
            jax.block_until_ready(compiled(params, x, key=key))
        walls, cpus = _time(
            lambda: jax.block_until_ready(compiled(params, x, key=key)), args.repeats
        )
        result["encode"] = _summary(walls, cpus, args.batch)

    if args.torch and "decode" in outs:
        result["torch"] = _torch_decode(params, z, outs["decode"], args)
    return result


def _torch_decode(params, z, jax_out, args) -> dict:
    import numpy as np
    import torch

    from nag_jax.models.vae import state_dict_from_params

    try:
        from diffusers import AutoencoderKL as TorchVAE

        n = 4
        model = TorchVAE(
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * n,
            up_block_types=("UpDecoderBlock2D",) * n,
            layers_per_block=2,
        )
        impl = "diffusers"
    except ImportError:
        from vae_torch_reference import TorchAutoencoderKL as TorchVAE

        model, impl = TorchVAE(), "tests/vae_torch_reference.py"
    sd = {k: torch.from_numpy(v) for k, v in state_dict_from_params(params).items()}
    model.load_state_dict(sd, strict=True)
    model.eval()
    zt = torch.from_numpy(np.ascontiguousarray(np.asarray(z).transpose(0, 3, 1, 2))) / 0.18215

    def call():
        with torch.no_grad():
            out = model.decode(zt)
        return out if isinstance(out, torch.Tensor) else out.sample

    for _ in range(args.warmup):
        out = call()
    res = {}
    walls, cpus = _time(lambda: res.__setitem__("out", call()), args.repeats)
    out = res["out"]
    ref = out.numpy().transpose(0, 2, 3, 1)
    rel = float(np.linalg.norm(np.asarray(jax_out) - ref) / np.linalg.norm(ref))
    return {
        "impl": impl,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "decode": _summary(walls, cpus, args.batch),
        "rel_err_vs_jax": rel,
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--mode", choices=["decode", "encode", "both"], default="decode")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--latent-size", type=int, default=32, help="latent side (image side / 8)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--chunk-size", type=int, default=8, help="images per lax.map step; 0 = all")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1, help="untimed calls after compiling")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--torch", action="store_true", help="also time the PyTorch reference")
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    result = run(args)
    timing.emit_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
