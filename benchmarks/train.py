"""Train-step throughput and per-device param + optimizer bytes vs device count (JSON output).

    python benchmarks/train.py [--devices 1,2,4,8] [--steps 20] [--hidden 128] [--depth 2]
        [--batch 16] [--out results.json]
    # the demo's fine-tune step (configs/demo.py, its 2 host devices) by model.attention_impl,
    # model.dense_impl and train.cpu_dot_library
    XLA_FLAGS=--xla_force_host_platform_device_count=2 python benchmarks/train.py \
        --config configs/demo.py --attention explicit,xla --dense transposed_input,xla \
        --cpu-dots onednn,xla --steps 100 --repeats 4

On a CPU-only machine the script creates 8 virtual CPU devices (XLA flag set before JAX is
imported), so the sharding layouts are real but the devices share the host's cores: steps/s on
CPU shows the partitioning overhead, not accelerator scaling; the memory column is exact.
For each device count N it builds the ('data', 'fsdp') mesh over the first N devices with FSDP on
(and off, for the memory baseline), runs the jitted, donated train step of nag_jax.training on a
tiny SiT with the stand-in flow-matching loss, and reports:
  steps_per_sec, examples_per_sec   (after compiling and one warm-up pass of --steps steps)
  param_opt_bytes_per_device        max over devices of params + opt state bytes (FSDP)
  replicated_bytes_per_device       the same without FSDP (every device holds everything)
  compile_sec
With ``--config`` it times that config's own train step (its model, objective, optimizer, batch
and mesh over all devices; random weights and data) once per implementation choice
(``benchmarks.timing.step_variants`` of ``--attention``, ``--dense`` and ``--cpu-dots``;
"default" for the platform's), in ``--repeats`` interleaved rounds of ``--steps`` steps (the
order reversed every other round), and reports steps/s per round and the best: what each choice
does to that training run's wall time.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

if "jax" not in sys.modules:
    os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def measure(num_devices: int, args) -> dict:
    import jax
    import numpy as np

    from benchmarks import timing
    from nag_jax import parallel
    from nag_jax.training import step as step_lib
    from nag_jax.training.loop import setup_state
    from tests.fixtures import standin_loss, tiny_config, tiny_model

    cfg = tiny_config()
    cfg.model.update(hidden_size=args.hidden, depth=args.depth, num_heads=4, input_size=16)
    cfg.data.global_batch_size = args.batch
    row = {"devices": num_devices}
    devices = jax.devices()[:num_devices]
    for fsdp in (False, True):
        cfg.parallel.fsdp = fsdp
        mesh = parallel.create_mesh(cfg.parallel, devices)
        model = tiny_model(cfg)
        state, shardings, tx = setup_state(cfg, model, mesh)
        bytes_ = max(parallel.per_device_bytes((state.params, state.opt_state)).values())
        if not fsdp:
            row["replicated_bytes_per_device"] = bytes_
            del state
            continue
        row["param_opt_bytes_per_device"] = bytes_
        fn = step_lib.jit_train_step(
            shardings,
            mesh,
            apply_fn=step_lib.make_apply_fn(model),
            loss_fn=standin_loss,
            tx=tx,
            ema_decay=0.9999,
        )
        rng = np.random.default_rng(0)
        local = {
            "x": rng.standard_normal((args.batch, 16, 16, 3)).astype(np.float32),
            "y": rng.integers(0, 4, args.batch).astype(np.int32),
        }
        batch = parallel.global_batch(local, mesh)
        t0 = time.perf_counter()
        compiled = fn.lower(state, batch).compile()
        row["compile_sec"] = time.perf_counter() - t0
        holder = {"state": state}

        def steps(holder=holder, compiled=compiled, batch=batch):
            for _ in range(args.steps):
                holder["state"], metrics = compiled(holder["state"], batch)
            return metrics

        dt = timing.time_calls(steps, repeats=1, warmup=1).median
        state = holder["state"]
        row["steps_per_sec"] = args.steps / dt
        row["examples_per_sec"] = args.steps * args.batch / dt
        row["param_count"] = sum(int(x.size) for x in jax.tree.leaves(state.params))
    row["bytes_ratio_vs_replicated"] = (
        row["param_opt_bytes_per_device"] / row["replicated_bytes_per_device"]
    )
    return row


def by_implementation(args) -> dict:
    """Steps/s of ``args.config``'s train step per choice of ``model.attention_impl``,
    ``model.dense_impl`` and ``train.cpu_dot_library``, interleaved rounds."""
    import jax
    import numpy as np

    from benchmarks import timing
    from benchmarks.vs_pytorch import _choices, _interleaved
    from nag_jax import parallel
    from nag_jax.config.schema import config_file

    config = config_file(args.config)
    config.model.weights = None  # random weights: the step's cost does not depend on them
    mesh = parallel.create_mesh(config.parallel, jax.devices())
    m, b = config.model, int(config.data.global_batch_size)
    rng = np.random.default_rng(0)
    local = {
        "x": rng.standard_normal((b, m.input_size, m.input_size, m.in_channels)).astype(np.float32),
        "y": rng.integers(0, m.num_classes, b).astype(np.int32),
    }
    batch = parallel.global_batch(local, mesh)
    fns, compile_s = {}, {}
    choices = [_choices(v) for v in (args.attention, args.dense, args.cpu_dots)]
    for variant in timing.step_variants(*choices):
        timing.apply_variant(config, variant)
        fn, seconds, model = timing.train_steps(config, mesh, batch, args.steps)
        label = timing.variant_label(model, config, mesh)
        fns[label], compile_s[label] = fn, seconds
        fn()  # warm-up
    rounds = _interleaved(fns, args.repeats)
    per_s = {k: [args.steps / t for t in v] for k, v in rounds.items()}
    return {
        "benchmark": "train_step_by_implementation",
        "config": args.config,
        "device": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
        "global_batch": b,
        "steps_per_round": args.steps,
        "steps_per_sec_by_round": per_s,
        "best_steps_per_sec": {k: max(v) for k, v in per_s.items()},
        "compile_sec": compile_s,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--devices", default="1,2,4,8")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--config", default=None, help="time this config's train step instead")
    p.add_argument("--attention", default="explicit,xla", help="with --config: impls to compare")
    p.add_argument("--dense", default="default", help="with --config: dense impls to compare")
    p.add_argument(
        "--cpu-dots", default="default", help="with --config: train.cpu_dot_library choices"
    )
    p.add_argument("--repeats", type=int, default=4, help="with --config: interleaved rounds")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    import jax

    from benchmarks import timing

    if args.config:
        timing.emit_json(by_implementation(args), args.out)
        return

    counts = [int(n) for n in args.devices.split(",") if int(n) <= jax.device_count()]
    rows = [measure(n, args) for n in counts]
    result = {
        "benchmark": "train_step",
        "backend": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind,
        "model": f"SiT hidden={args.hidden} depth={args.depth} 16x16x3 patch 2",
        "global_batch": args.batch,
        "steps": args.steps,
        "results": rows,
    }
    timing.emit_json(result, args.out)


if __name__ == "__main__":
    main()
