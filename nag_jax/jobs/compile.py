"""``mode = "compile"``: will this config fit a pod? AOT-compile it for the pod, from a CPU machine.

    # a TPU pod, with the real TPU compiler (libtpu) on a CPU machine:
    python -m venv ~/venv-tpu && . ~/venv-tpu/bin/activate && pip install -e . "jax[tpu]==0.10.2"
    nag-jax --config=configs/sit_xl.py --workdir=/tmp/compile --config.mode=compile \\
        --config.compile.topology=v5e:4x4 --config.compile.per_device_batch=32
    # this host's CPU devices (no libtpu; what the tests run):
    XLA_FLAGS=--xla_force_host_platform_device_count=8 nag-jax --config=configs/demo.py \\
        --workdir=/tmp/compile --config.mode=compile --config.compile.topology=cpu:8

The configured train step (``nag_jax.training.step.jit_train_step``: the config's model, NAG loss,
AdamW, EMA, the state sharded by config.parallel over the topology's chips, donated) and the
configured sampler (``nag_jax.sampling.build.build_sampler`` at ``sample.batch_size``) are lowered
from abstract shapes (no parameter memory is allocated) and compiled for ``compile.topology``
(``jax.experimental.topologies.get_topology_desc``: compile-only TPU devices, as MaxText's
train_compile.py). Printed per chip (``compiled.memory_analysis()``): argument, output, aliased
(donated), temporary and generated-code bytes, their peak estimate against the chip's HBM; the
FLOPs of one step (``compiled.cost_analysis()``, per chip and in all) and the compile time. The
table is also written to ``<workdir>/compile_report.json``.

A train step that does not fit stops with one line naming the model, the batch, the topology and
what would fit: the largest per-chip batch (compiled again at half the batch and extrapolated
linearly in the batch, said so), ``model.remat=True`` when it is off, or the chips the global batch
needs at that per-chip batch. Peak = arguments + outputs - aliased + temporaries + code: XLA's own
estimate of the live bytes, which does not count the runtime's reserved HBM, so a config within a
few percent of the HBM is reported as fitting but is at risk.

Time convention: that of the model family (nag_jax.diffusion.family); nothing here runs a step.
"""

from __future__ import annotations

import json
import os

from absl import logging

from nag_jax import parallel
from nag_jax.errors import ConfigError
from nag_jax.training.memory import (
    compile_sampler,
    does_not_fit_message,
    format_row,
    resolve_target,
    row,
    shrink_until_two_points,
    train_row,
)


def run(config, workdir: str):
    """Compiles and reports; returns the report dict. Raises ConfigError (one line) when the train
    step does not fit the chip's HBM."""
    from nag_jax.sampling import build

    cc = config.compile
    target = resolve_target(cc.topology, cc.hbm_gib)
    mesh = parallel.create_mesh(config.parallel, target.devices)
    shards = parallel.batch_shards(mesh)
    if cc.per_device_batch:
        b = int(cc.per_device_batch)
    else:
        gbs = int(config.data.global_batch_size)
        parallel.check_global_batch(gbs, mesh)
        b = gbs // shards
    model = build.build_model(config.model, platform=target.devices[0].platform)
    print(
        f"compile {config.model.name} ({config.model.dtype}, remat={config.model.remat}) for "
        f"{target.name}: {len(target.devices)} x {target.kind}, mesh {dict(mesh.shape)}",
        flush=True,
    )
    rows = [train_row(config, model, mesh, b, target)]
    print(format_row(rows[-1], target), flush=True)
    report = dict(
        model=config.model.name,
        dtype=config.model.dtype,
        remat=bool(config.model.remat),
        topology=target.name,
        device_kind=target.kind,
        devices=len(target.devices),
        chips=target.chips,
        mesh=dict(mesh.shape),
        rows=rows,
    )
    message = None
    if rows[0]["fits"] is False:
        b_max, b2, peak = shrink_until_two_points(config, model, mesh, b, target, rows)
        for r in rows[1:]:
            print(format_row(r, target), flush=True)
        report["largest_per_device_batch_extrapolated"] = b_max
        message = does_not_fit_message(config, target, mesh, b, peak, b_max, b2)
    elif cc.sampler:
        compiled, seconds, n = compile_sampler(config, model, mesh)
        rows.append(
            row(
                f"sample:{config.sample.sampler}",
                compiled,
                seconds,
                target,
                per_device_batch=n // shards,
                global_batch=n,
                num_steps=int(config.sample.num_steps),
            )
        )
        print(format_row(rows[-1], target), flush=True)
        del compiled
    if workdir:
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "compile_report.json"), "w") as f:
            json.dump(report, f, indent=1)
        logging.info("compile report: %s", os.path.join(workdir, "compile_report.json"))
    if message:
        raise ConfigError(message)
    return report
