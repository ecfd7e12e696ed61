"""``mode: sample``: sample a PNG grid and an ADM-style .npz from converted or trained weights.

    python -m nag_jax.main --config=configs/sample_sit_xl.py --workdir=runs/sample_sit \
        --config.model.weights=ckpt/sit_xl2_256 --config.vae.path=ckpt/sd-vae-ft-ema

Steps, over library calls (as DiT's sample.py): the model of ``config.model.weights`` (a
``python -m nag_jax.convert to-orbax`` directory, whose metadata fixes the architecture, or a
training workdir's checkpoints/ directory, EMA params; nag_jax.sampling.build.load_model) ->
images 0..N-1 of ``config.seed`` (N = ``config.sample.num_images``) from the one sharded batch
sampler (nag_jax.sampling.generate), in batches of ``config.sample.batch_size`` over all devices,
latents decoded by the SD-VAE at ``config.vae.path`` in the same jit (pixel models skip it).
Image i is the same image mode "eval" draws for i, whatever the batch size or device count.
Process 0 writes

    <workdir>/samples/grid.png        the first ``sample.grid_images`` images
    <workdir>/samples/samples.npz     arr_0: (N, H, W, 3) uint8, arr_1: (N,) int labels
    <workdir>/samples/info.json       config, checkpoint metadata, timings

The workdir and the weights may be local or remote (``gs://``; nag_jax.storage.paths).
uint8 rule: ``nag_jax.utils.to_uint8`` = clip(round(127.5 x + 127.5), 0, 255).
Time conventions: none of its own (nag_jax.sampling.build).
"""

from __future__ import annotations

import json
import math
import time

import jax
import numpy as np
from absl import logging

from nag_jax import parallel, utils
from nag_jax.config import schema
from nag_jax.sampling import build, generate
from nag_jax.storage import workdir as workdir_lib
from nag_jax.storage.paths import as_path, atomic_write


def run(config, workdir: str) -> dict:
    """Samples, decodes and writes the grid + .npz with the workdir locked (a second job on the
    same workdir fails at once, naming the holder); returns a summary dict (paths, timings)."""
    schema.validate(config)
    with workdir_lib.locked(workdir, job="sample") as locked_workdir:
        return _run(config, locked_workdir)


def _run(config, workdir: str) -> dict:
    sc = config.sample
    model, params, meta, notes = build.load_model(config)  # config.model fitted to the weights
    for note in notes:
        logging.info("sample: %s", note)
    params = build.with_domain_params(config, params)  # Domain Guidance: + pre-trained
    decode = build.build_decoder(config)
    if decode is None and config.vae.path:
        logging.warning("sample: %s is a pixel model; config.vae.path ignored", config.model.name)

    mesh = parallel.create_mesh(config.parallel)
    batch = generate.padded_batch_size(int(sc.batch_size), mesh)
    run_batch = generate.make_batch_sampler(config, model, params, mesh, decode=decode)
    logging.info("sample: %d images in batches of %d (compiling first)", sc.num_images, batch)
    t0 = time.perf_counter()
    n = int(sc.num_images)
    images, labels = generate.sample_all(run_batch, params, n, batch, desc="sample")
    t_sample = time.perf_counter() - t0

    out_dir = as_path(workdir) / "samples"
    n_grid = min(int(sc.grid_images), len(images))
    summary = dict(
        npz=str(out_dir / "samples.npz"),
        grid=str(out_dir / "grid.png") if n_grid else None,
        num_images=int(len(images)),
        image_shape=list(images.shape[1:]),
        devices=int(mesh.devices.size),
        batch_size=batch,
        sample_s=round(t_sample, 3),  # sampling and VAE decoding, one jit
        checkpoint=str(as_path(config.model.weights)),
        checkpoint_metadata=meta,
        notes=notes,
        config=json.loads(config.to_json_best_effort()),
    )
    if jax.process_index() == 0:
        atomic_write(summary["npz"], lambda f: np.savez(f, arr_0=images, arr_1=labels))
        if n_grid:
            cols = int(sc.grid_cols) or math.ceil(math.sqrt(n_grid))
            utils.save_png(summary["grid"], utils.make_grid(images[:n_grid], cols))
        (out_dir / "info.json").write_text(json.dumps(summary, indent=1, default=str))
    logging.info("sample: wrote %s and %s", summary["npz"], summary["grid"])
    return summary


# Names that moved (issue 21): a one-line error naming the new home.
__getattr__ = utils.moved_names(
    __name__,
    {
        "reconcile_model_config": "nag_jax.sampling.build.reconcile_model_config",
    },
)
