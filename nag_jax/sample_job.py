"""``mode: sample``: sample a PNG grid and an ADM-style .npz from converted or trained weights.

    python -m nag_jax.main --config=configs/sample_sit_xl.py --workdir=runs/sample_sit \
        --config.sample.checkpoint=ckpt/sit_xl2_256 --config.sample.vae=ckpt/sd-vae-ft-ema

Steps: load the params (a ``python -m nag_jax.convert to-orbax`` directory, whose metadata fixes
the architecture, or a training workdir's checkpoints/ directory, EMA params, architecture from
``config.model``) -> build the model and the guided sampler through nag_jax.builders -> sample
``config.sample.num_images`` images in batches of ``config.sample.batch_size`` sharded over all
local devices (one PRNG key per image, so image i does not depend on the batch or device count) ->
decode latents with the SD-VAE (``config.sample.vae``; pixel models skip it) -> write

    <workdir>/samples/grid.png        the first ``grid_images`` images
    <workdir>/samples/samples.npz     arr_0: (N, H, W, 3) uint8, arr_1: (N,) int labels
    <workdir>/samples/info.json       config, checkpoint metadata, timings

(with several processes: ``samples_p{i}.npz`` per process, each its own block of images).
uint8 rule: ``nag_jax.utils.to_uint8`` = clip(round(127.5 x + 127.5), 0, 255).

Time conventions: SiT float t in [0, 1] (0 = noise, 1 = data); DiT integer step (0 = least
noise); guidance intervals in noise level (1 = noise). All of it lives in builders/sampling.
"""

from __future__ import annotations

import json
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from nag_jax import builders, utils

ARCH_FIELDS = ("input_size", "in_channels", "num_classes", "learn_sigma")
SIZE_FIELDS = ("hidden_size", "depth", "num_heads")


def _get(cfg, name, default=None):
    if cfg is None:
        return default
    value = cfg.get(name, default)
    return default if value is None else value


def load_checkpoint(path: str) -> tuple[dict, dict]:
    """-> (params as numpy, metadata or {}) from a converted checkpoint or a training workdir."""
    from nag_jax.weights import load_params

    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"config.sample.checkpoint={path} does not exist; convert a release with "
            "`python -m nag_jax.convert to-orbax SiT-XL-2-256.pt ckpt/sit_xl2_256 --family SiT` "
            "or point it at a training workdir's checkpoints/ directory."
        )
    return load_params(path)


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
            raise ValueError(
                f"config.model.name={mc.name} is a {fam_cfg} model but the checkpoint is "
                f"{meta['model']} ({fam_ckpt}); use configs/sample_{fam_ckpt.lower()}_xl.py or "
                f"--config.model.name={meta['model']}."
            )
        with mc.unlocked():
            for k in ("name",) + ARCH_FIELDS + SIZE_FIELDS:
                new = meta["model"] if k == "name" else meta[k]
                if mc.get(k) is not None and mc.get(k) != new:
                    notes.append(f"model.{k}: {mc.get(k)} -> {new} (from the checkpoint)")
                mc[k] = new
    nag = float(_get(config.sample, "nag_scale", 0.0)) != 0.0
    with mc.unlocked():
        if has_token:
            if mc.get("null_noise") != "learned":
                notes.append("model.null_noise -> 'learned' (the checkpoint has a token)")
            mc.null_noise = "learned"
        elif mc.get("null_noise", "learned") == "learned":
            if nag:
                raise ValueError(
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
        raise ValueError(
            f"checkpoint params do not fit config.model ({config.model.name}): missing "
            f"{missing[:8]}, unexpected {extra[:8]}, shape mismatches {bad[:8]}. Fix "
            "config.model (input_size, hidden_size, ...) or the checkpoint path."
        )


def _labels(config, num_classes: int, n: int, key) -> np.ndarray:
    labels = _get(config.sample, "labels")
    if labels is None:
        return np.asarray(jax.random.randint(key, (n,), 0, num_classes), np.int32)
    labels = np.asarray(list(labels), np.int32).reshape(-1)
    if labels.size == 0 or labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(
            f"config.sample.labels={tuple(labels)} must be non-empty class ids in "
            f"[0, {num_classes})."
        )
    return np.resize(labels, n)  # cycled to num_images


def run(config, workdir: str) -> dict:
    """Samples, decodes and writes the grid + .npz; returns a summary dict (paths, timings)."""
    sc = config.sample
    ckpt = _get(sc, "checkpoint") or _get(config.get("train"), "init_from")
    if not ckpt:
        raise ValueError(
            "No weights: set --config.sample.checkpoint to a converted checkpoint (python -m "
            "nag_jax.convert to-orbax ...) or a training workdir's checkpoints/ directory."
        )
    params, meta = load_checkpoint(ckpt)
    notes = reconcile_model_config(config, meta, params)
    for note in notes:
        logging.info("sample: %s", note)
    model = builders.build_model(config.model)
    _check_params(model, params, config)

    latent = model.in_channels != 3
    vae_path = _get(sc, "vae")
    if latent and not vae_path:
        raise ValueError(
            f"{config.model.name} samples {model.in_channels}-channel latents; set "
            "--config.sample.vae to the SD-VAE (a local stabilityai/sd-vae-ft-ema folder or a "
            "`python -m nag_jax.convert vae` output)."
        )
    decode = vae_params = None
    if latent:
        from nag_jax import vae as vae_lib

        vae, vae_params = vae_lib.load_vae(vae_path, chunk_size=int(_get(sc, "vae_chunk_size", 8)))
        decode = jax.jit(vae.decode)
    elif vae_path:
        logging.warning("sample: %s is a pixel model; config.sample.vae ignored", model)

    # Devices and sharding: the batch is split over all local devices; params replicated.
    devices = np.asarray(jax.local_devices())
    mesh = jax.sharding.Mesh(devices, ("data",))
    rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    dat = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    n_dev = devices.size
    batch = int(sc.batch_size)
    batch = -(-batch // n_dev) * n_dev  # a multiple of the device count (padded rows dropped)

    num_images = int(sc.num_images)
    pid, nproc = jax.process_index(), jax.process_count()
    lo, hi = num_images * pid // nproc, num_images * (pid + 1) // nproc
    seed_key = jax.random.key(int(config.seed))
    all_labels = _labels(config, model.num_classes, num_images, jax.random.fold_in(seed_key, 1))
    sample_key = jax.random.fold_in(seed_key, 2)

    sample_fn = jax.jit(
        builders.build_sampler(config, model), in_shardings=(rep, dat, dat), out_shardings=dat
    )
    params = jax.device_put(params, rep)
    if vae_params is not None:
        vae_params = jax.device_put(vae_params, rep)

    images, t_sample, t_decode = [], 0.0, 0.0
    for start in range(lo, hi, batch):
        idx = np.arange(start, start + batch)
        valid = int(min(batch, hi - start))
        idx_c = np.minimum(idx, num_images - 1)  # padding rows repeat the last image
        keys = builders.per_image_keys(sample_key, idx_c)
        y = jnp.asarray(all_labels[idx_c])
        t0 = time.perf_counter()
        x = sample_fn(params, jax.device_put(keys, dat), jax.device_put(y, dat))
        x.block_until_ready()
        t_sample += time.perf_counter() - t0
        if decode is not None:
            t0 = time.perf_counter()
            x = decode(vae_params, x)
            x.block_until_ready()
            t_decode += time.perf_counter() - t0
        images.append(utils.to_uint8(np.asarray(x)[:valid]))
        logging.info("sample: %d / %d images", min(start + batch, hi) - lo, hi - lo)

    images = np.concatenate(images) if images else np.zeros((0, 1, 1, 3), np.uint8)
    labels = all_labels[lo:hi]
    out_dir = os.path.join(workdir, "samples")
    os.makedirs(out_dir, exist_ok=True)
    suffix = "" if nproc == 1 else f"_p{pid}"
    npz = os.path.join(out_dir, f"samples{suffix}.npz")
    tmp = npz + ".tmp.npz"
    np.savez(tmp, arr_0=images, arr_1=labels)
    os.replace(tmp, npz)
    grid_path = None
    n_grid = min(int(_get(sc, "grid_images", 64)), len(images))
    if n_grid and pid == 0:
        grid_path = os.path.join(out_dir, "grid.png")
        cols = int(_get(sc, "grid_cols", 0)) or math.ceil(math.sqrt(n_grid))
        utils.save_png(grid_path, utils.make_grid(images[:n_grid], cols))
    summary = dict(
        npz=npz,
        grid=grid_path,
        num_images=int(len(images)),
        image_shape=list(images.shape[1:]),
        devices=int(n_dev),
        batch_size=batch,
        sample_s=round(t_sample, 3),
        decode_s=round(t_decode, 3),
        checkpoint=os.path.abspath(ckpt),
        checkpoint_metadata=meta,
        notes=notes,
        config=json.loads(config.to_json_best_effort()),
    )
    if pid == 0:
        with open(os.path.join(out_dir, "info.json"), "w") as f:
            json.dump(summary, f, indent=1, default=str)
    logging.info("sample: wrote %s and %s", npz, grid_path)
    return summary
