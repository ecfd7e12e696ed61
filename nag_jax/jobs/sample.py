"""``mode: sample``: sample a PNG grid and an ADM-style .npz from converted or trained weights.

    python -m nag_jax.main --config=configs/sample_sit_xl.py --workdir=runs/sample_sit \
        --config.model.weights=ckpt/sit_xl2_256 --config.vae.path=ckpt/sd-vae-ft-ema

Steps: load the params at ``config.model.weights`` (a ``python -m nag_jax.convert to-orbax``
directory, whose metadata fixes the architecture, or a training workdir's checkpoints/ directory,
EMA params, architecture from ``config.model``) -> build the model and the guided sampler through
nag_jax.sampling.build -> draw images 0..N-1 of ``config.seed`` (N = ``config.sample.num_images``)
with
nag_jax.sampling.generate's sharded batch sampler, in batches of ``config.sample.batch_size`` over
all
devices, decoding latents with the SD-VAE at ``config.vae.path`` in the same jit (pixel models
skip it). Image i is the same image mode "eval" draws for i, whatever the batch size or device
count. Process 0 writes

    <workdir>/samples/grid.png        the first ``sample.grid_images`` images
    <workdir>/samples/samples.npz     arr_0: (N, H, W, 3) uint8, arr_1: (N,) int labels
    <workdir>/samples/info.json       config, checkpoint metadata, timings

The workdir and the weights may be local or remote (``gs://``; nag_jax.storage.paths).

uint8 rule: ``nag_jax.utils.to_uint8`` = clip(round(127.5 x + 127.5), 0, 255).

Time conventions: SiT float t in [0, 1] (0 = noise, 1 = data); DiT integer step (0 = least
noise); guidance intervals in noise level (1 = noise). All of it lives in builders/sampling.
"""

from __future__ import annotations

import io
import json
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from nag_jax import parallel, utils
from nag_jax.config import schema
from nag_jax.sampling import build, generate
from nag_jax.storage.paths import as_path, is_remote

ARCH_FIELDS = ("input_size", "in_channels", "num_classes", "learn_sigma")
SIZE_FIELDS = ("hidden_size", "depth", "num_heads")


def reconcile_model_config(config, meta: dict, params: dict) -> list[str]:
    """Makes ``config.model`` describe the checkpoint; returns notes on what changed.

    With converted metadata the checkpoint defines the architecture (name, input size, channels,
    classes, widths); a family mismatch is an error (the sampler depends on it). The null noise
    token: "learned" iff the params have one. NAG (nag_scale != 0) on a checkpoint without a
    token is refused unless config.model.null_noise == "zero" was asked for explicitly.
    """
    from nag_jax.models import parse_model_name

    mc, notes = config.model, []
    has_token = "null_noise_token" in params
    if meta:
        fam_cfg, fam_ckpt = parse_model_name(mc.name)[0], meta["family"]
        if fam_cfg != fam_ckpt:
            raise schema.ConfigError(
                f"config.model.name={mc.name} is a {fam_cfg} model but the checkpoint is "
                f"{meta['model']} ({fam_ckpt}); use configs/sample_{fam_ckpt.lower()}_xl.py or "
                f"--config.model.name={meta['model']}."
            )
        with mc.unlocked():
            for k in ("name",) + ARCH_FIELDS + SIZE_FIELDS:
                new = meta["model"] if k == "name" else meta[k]
                if mc[k] is not None and mc[k] != new:
                    notes.append(f"model.{k}: {mc[k]} -> {new} (from the checkpoint)")
                mc[k] = new
    nag = float(config.sample.nag_scale) != 0.0
    with mc.unlocked():
        if has_token:
            if mc.null_noise != "learned":
                notes.append("model.null_noise -> 'learned' (the checkpoint has a token)")
            mc.null_noise = "learned"
        elif mc.null_noise == "learned":
            if nag:
                raise schema.ConfigError(
                    f"sample.nag_scale={config.sample.nag_scale} needs a learned null noise "
                    "token, and this checkpoint has none (a release checkpoint; NAG fine-tuning "
                    "creates it: configs/sit_xl_nag_finetune.py). Set --config.sample."
                    "nag_scale=0.0, or --config.model.null_noise=zero to use a zero token."
                )
            mc.null_noise = "zero"
    return notes


def _check_params(model, params, config) -> None:
    s = model.input_size
    shapes = jax.eval_shape(
        model.init,
        jax.random.key(0),
        jnp.zeros((1, s, s, model.in_channels)),
        jnp.zeros((1,)),
        jnp.zeros((1,), jnp.int32),
    )["params"]
    want = jax.tree.map(lambda a: tuple(a.shape), shapes)
    got = jax.tree.map(lambda a: tuple(np.shape(a)), params)
    if want != got:
        fw = dict(jax.tree_util.tree_leaves_with_path(want, is_leaf=lambda x: isinstance(x, tuple)))
        fg = dict(jax.tree_util.tree_leaves_with_path(got, is_leaf=lambda x: isinstance(x, tuple)))
        name = jax.tree_util.keystr
        missing = sorted(name(k) for k in set(fw) - set(fg))
        extra = sorted(name(k) for k in set(fg) - set(fw))
        bad = sorted(f"{name(k)}: {fg[k]} vs {fw[k]}" for k in set(fw) & set(fg) if fw[k] != fg[k])
        raise schema.ConfigError(
            f"checkpoint params do not fit config.model ({config.model.name}): missing "
            f"{missing[:8]}, unexpected {extra[:8]}, shape mismatches {bad[:8]}. Fix "
            "config.model (input_size, hidden_size, ...) or the checkpoint path."
        )


def run(config, workdir: str) -> dict:
    """:func:`_run` with the workdir locked (nag_jax.storage.workdir: a second job on the same
    workdir
    fails at once, naming the holder)."""
    from nag_jax.storage import workdir as workdir_lib

    with workdir_lib.locked(workdir, job="sample") as locked_workdir:
        return _run(config, locked_workdir)


def _run(config, workdir: str) -> dict:
    """Samples, decodes and writes the grid + .npz; returns a summary dict (paths, timings)."""
    schema.validate(config)
    sc = config.sample
    if not config.model.weights:
        raise schema.ConfigError(
            "No weights: set --config.model.weights to a converted checkpoint (python -m "
            "nag_jax.convert to-orbax ...) or a training workdir's checkpoints/ directory."
        )
    params, meta = generate.load_weights(config.model.weights)
    notes = reconcile_model_config(config, meta, params)
    for note in notes:
        logging.info("sample: %s", note)
    model = build.build_model(config.model)
    _check_params(model, params, config)
    params = generate.with_domain_params(config, params)  # Domain Guidance: + pre-trained
    decode = generate.load_decoder(config)
    if decode is None and config.vae.path:
        logging.warning("sample: %s is a pixel model; config.vae.path ignored", config.model.name)

    mesh = parallel.create_mesh(config.parallel)
    batch = generate.padded_batch_size(int(sc.batch_size), mesh)
    num_images = int(sc.num_images)
    run_batch = generate.make_batch_sampler(config, model, params, mesh, decode=decode)
    params = run_batch.place(params)
    images, labels, t0 = [], [], time.perf_counter()
    logging.info(
        "sample: %d images in batches of %d; compiling the sampler first (the first batch waits "
        "for it: a minute or more for XL models)",
        num_images,
        batch,
    )
    batches = generate.iterate_batches(
        lambda i: run_batch(params, i), np.arange(num_images), batch, desc="sample"
    )
    for _, x, y in batches:
        images.append(x)
        labels.append(y)
    t_sample = time.perf_counter() - t0

    images = np.concatenate(images) if images else np.zeros((0, 1, 1, 3), np.uint8)
    labels = np.concatenate(labels) if labels else np.zeros((0,), np.int32)
    out_dir = as_path(workdir) / "samples"
    npz = str(out_dir / "samples.npz")
    grid_path = None
    n_grid = min(int(sc.grid_images), len(images))
    summary = dict(
        npz=npz,
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
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = as_path(npz + ".tmp.npz")
        with tmp.open("wb") as f:
            np.savez(f, arr_0=images, arr_1=labels)
        tmp.replace(as_path(npz))
        if n_grid:
            grid_path = summary["grid"]
            cols = int(sc.grid_cols) or math.ceil(math.sqrt(n_grid))
            _write_png(grid_path, utils.make_grid(images[:n_grid], cols))
        (out_dir / "info.json").write_text(json.dumps(summary, indent=1, default=str))
    logging.info("sample: wrote %s and %s", npz, grid_path)
    return summary


def _write_png(path: str, image: np.ndarray) -> None:
    """utils.save_png for a local path; a remote one gets the PNG bytes through epath."""
    if not is_remote(path):
        return utils.save_png(path, image)
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(image)).save(buf, format="PNG")
    as_path(path).write_bytes(buf.getvalue())
