"""Per-chip memory of the train step by topology, per-chip batch, remat and scanned blocks (JSON).

    # TPU topologies, the real TPU compiler (libtpu in a separate venv: nag_jax.jobs.compile)
    python benchmarks/memory.py --model SiT-XL/2 --topologies v5e:2x2,v5e:4x4 --batches 8,32,64 \\
        --remat 0,1 --out benchmarks/results/memory_xl2_tpu.json
    # CPU devices (the CPU compiler's own buffers: not a guide to TPU or GPU memory)
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python benchmarks/memory.py \\
        --model SiT-S/2 --topologies cpu:8 --batches 2,4 --remat 0,1 --scan 0,1

Each row AOT-compiles the release config's train step (``nag_jax.config.release.release_config``:
bf16 compute, f32 params, AdamW + EMA, FSDP over all chips, donated state; NAG loss) from abstract
shapes with ``nag_jax.training.memory.compile_train_step`` (nothing is allocated) and records XLA's
per-device bytes (``memory_analysis``: arguments, outputs, aliased, temporaries, generated code,
their peak estimate) against the chip's HBM, the step's FLOPs and the compile time. Per
(topology, remat, scan) the largest per-chip batch that fits is extrapolated linearly in the batch
(said so in the field name) from the two largest batches compiled, or from one batch and the bytes
per image of another topology (``--slope-from``; named in the row). A batch the TPU compiler
refuses for lack of HBM counts with the temporaries it asked for
(nag_jax.training.memory.peak_points).
A row that fails otherwise records its error and the run goes on. Memory numbers do not depend on
the machine's load; compile seconds do.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _bytes_per_image(points) -> float:
    """Peak bytes per further image through the two largest batches of ``peak_points``."""
    (b1, p1), (b2, p2) = points[0], points[1]
    return (p1 - p2) / (b1 - b2)


def measure(args) -> dict:
    from nag_jax import parallel
    from nag_jax.config.release import release_config
    from nag_jax.sampling import build
    from nag_jax.training import memory as compile_job

    rows, fits = [], []
    # (remat, scan) -> (peak bytes per image, its topology): --slope-from files, two-batch rows
    slopes = {}
    for path in args.slope_from or []:
        with open(path) as f:
            prev = json.load(f)
        rows += [dict(r, from_file=path) for r in prev["rows"]]
        groups = {}
        for r in prev["rows"]:
            if "bytes_per_device" in r:  # train rows (a compiler out-of-memory row has None)
                groups.setdefault((r["remat"], r["scan_blocks"], r["topology"]), []).append(r)
        for (remat, scan, topology), group in groups.items():
            points = compile_job.peak_points(group)
            if len(points) >= 2:
                slopes.setdefault((remat, scan), (_bytes_per_image(points), topology))
        fits.extend(prev.get("largest_batch", []))
    for topology in args.topologies.split(","):
        try:
            target = compile_job.resolve_target(topology, args.hbm_gib)
        except Exception as e:  # noqa: BLE001 - recorded, the other topologies go on
            rows.append(dict(topology=topology, error=f"{type(e).__name__}: {e}"))
            continue
        for remat in _ints(args.remat):
            for scan in _ints(args.scan):
                config = release_config(args.model)
                config.model.update(remat=bool(remat), input_size=args.input_size)
                if args.dtype:
                    config.model.dtype = args.dtype
                if args.attention:
                    config.model.attention_impl = args.attention
                if args.fsdp:  # data x fsdp: FSDP within groups of --fsdp chips, data across
                    config.parallel.mesh.update(data=-1, fsdp=args.fsdp)
                model = build.build_model(config.model, platform=target.devices[0].platform).clone(
                    scan_blocks=bool(scan)
                )
                mesh = parallel.create_mesh(config.parallel, target.devices)
                done = []
                for b in _ints(args.batches):
                    meta = dict(model=args.model, dtype=config.model.dtype, topology=topology)
                    meta.update(device_kind=target.kind, devices=len(target.devices))
                    meta.update(chips=target.chips, remat=bool(remat), scan_blocks=bool(scan))
                    try:  # a compiler out-of-memory is a row (fits False), not an error
                        row = dict(meta, **compile_job.train_row(config, model, mesh, b, target))
                        done.append(row)
                    except Exception as e:  # noqa: BLE001
                        row = dict(
                            meta, per_device_batch=b, error=f"{type(e).__name__}: {e}"[:2000]
                        )
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                points = compile_job.peak_points(done)
                key = (bool(remat), bool(scan))
                fit = dict(topology=topology, remat=bool(remat), scan_blocks=bool(scan))
                if len(points) >= 2 and target.hbm_bytes:
                    (b1, p1), (b2, p2) = points[0], points[1]
                    slopes.setdefault(key, (_bytes_per_image(points), topology))
                    fit.update(
                        largest_per_device_batch_extrapolated=compile_job.largest_batch(
                            b1, p1, b2, p2, target.hbm_bytes
                        ),
                        from_batches=[b2, b1],
                    )
                elif len(points) == 1 and key in slopes and target.hbm_bytes:
                    # one compile here; bytes per further image from another chip's two compiles
                    (b1, p1), (slope, source) = points[0], slopes[key]
                    fit.update(
                        largest_per_device_batch_extrapolated=compile_job.largest_batch(
                            b1, p1, b1 + 1, p1 + slope, target.hbm_bytes
                        ),
                        from_batches=[b1],
                        bytes_per_image_from=source,
                    )
                else:
                    continue
                fits.append(fit)
    return dict(rows=rows, largest_batch=fits)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="SiT-XL/2")
    p.add_argument("--topologies", default="v5e:2x2,v5e:4x4")
    p.add_argument("--batches", default="8,32", help="per-chip batches (comma list)")
    p.add_argument("--remat", default="0,1", help="model.remat values (0/1 comma list)")
    p.add_argument("--scan", default="0", help="scan_blocks values (0/1 comma list)")
    p.add_argument("--input-size", type=int, default=32)
    p.add_argument("--dtype", default=None, help="compute dtype (default: the release's bf16)")
    p.add_argument("--hbm-gib", type=float, default=None, help="override the chip's HBM")
    p.add_argument("--fsdp", type=int, default=None, help="FSDP group size (default: all chips)")
    p.add_argument("--attention", default=None, help="model.attention_impl (default: platform's)")
    p.add_argument(
        "--xla-dump",
        default=None,
        help="also dump the compiled programs (buffer assignment, "
        "memory-usage report) here: XLA_FLAGS --xla_dump_to",
    )
    p.add_argument(
        "--slope-from",
        action="append",
        help="an earlier JSON of this benchmark: its rows are kept, and a topology compiled at "
        "ONE batch here is extrapolated with that file's bytes per image (said in the row)",
    )
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.xla_dump:  # read by XLA when the backend starts (jax is imported in measure)
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "") + f" --xla_dump_to={args.xla_dump} "
            "--xla_dump_hlo_as_text --xla_dump_hlo_module_re=.*train_step.*"
        )
    t0 = time.perf_counter()
    report = dict(
        benchmark="train step memory by topology and batch",
        command=" ".join(
            [os.path.basename(sys.argv[0])] + (sys.argv[1:] if argv is None else argv)
        ),
        time_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **measure(args),
    )
    report["wall_s"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(report, indent=1)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    print(text)
    return report


if __name__ == "__main__":
    main()
