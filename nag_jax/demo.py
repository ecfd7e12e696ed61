"""The built-in demo (``configs/demo.py``): train a small SiT on the shapes set, then compare
none / CFG / NAG / CFG+NAG on the same classes and seeds.

    python -m nag_jax.main --config=configs/demo.py --workdir=runs/demo

Writes into the workdir:
- ``grid_<setting>.png``: one labelled grid per setting (rows = classes, columns = seeds);
- ``comparison.png``: the four settings side by side (a subset of classes);
- ``metrics.json``: per setting the quality proxy (class accuracy of the shapes classifier on the
  samples, Fréchet distance in its feature space to real images) and sampling images/s, plus the
  classifier's accuracy on real images (the ceiling) and the training summary.

Every setting samples the SAME images: image i has label ``i % num_classes`` and its own key
``fold_in(key, i)``, so the grids differ only by guidance. Time convention: SiT, t = 0 noise,
t = 1 data.
"""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from nag_jax import builders
from nag_jax.data.synthetic import ShapesDataset
from nag_jax.evaluation import proxy
from nag_jax.utils import make_grid, save_png, to_uint8

# Real images for the Fréchet distance come from indices no training batch can draw.
_REAL_OFFSET = 2**41


def _setting_config(config, cfg_scale: float, nag_scale: float):
    c = config.copy_and_resolve_references()
    c.sample.cfg_scale = float(cfg_scale)
    c.sample.nag_scale = float(nag_scale)
    return c


def sample_setting(config, model, params, keys, labels):
    """Samples ``labels`` with one key per image; returns (images (N,H,W,C) numpy, images/s).

    Compilation happens before the clock starts (AOT lower + compile), so images/s is the steady
    sampling rate of the whole lax.scan sampler.
    """
    fn = jax.jit(builders.build_sampler(config, model))
    compiled = fn.lower(params, keys, labels).compile()
    start = time.perf_counter()
    images = jax.block_until_ready(compiled(params, keys, labels))
    seconds = time.perf_counter() - start
    return np.asarray(images), len(labels) / seconds


def labelled_grid(images, labels, class_names, seeds: int, title: str, scale: int | None = None):
    """uint8 RGB grid: one row per class (name on the left), ``seeds`` columns, a title above."""
    from PIL import Image, ImageDraw

    num_classes = len(class_names)
    seeds = min([seeds] + [int(np.sum(labels == k)) for k in range(num_classes)])
    order = np.concatenate([np.flatnonzero(labels == k)[:seeds] for k in range(num_classes)])
    tiles = to_uint8(images[order])
    scale = scale or max(1, 64 // tiles.shape[1])  # tiles of about 64 px on screen
    if scale > 1:
        tiles = tiles.repeat(scale, axis=1).repeat(scale, axis=2)
    grid = make_grid(tiles, ncols=seeds)
    tile = tiles.shape[1] + 2
    left, top = 110, 28
    canvas = Image.new("RGB", (grid.shape[1] + left, grid.shape[0] + top), "white")
    canvas.paste(Image.fromarray(grid), (left, top))
    draw = ImageDraw.Draw(canvas)
    draw.text((6, 8), title, fill="black")
    for k, name in enumerate(class_names):
        draw.text((6, top + 2 + k * tile + tile // 2 - 6), name, fill="black")
    return np.asarray(canvas)


def side_by_side(panels: list[np.ndarray], gap: int = 12) -> np.ndarray:
    h = max(p.shape[0] for p in panels)
    padded = [
        np.pad(p, ((0, h - p.shape[0]), (0, gap), (0, 0)), constant_values=255) for p in panels
    ]
    return np.concatenate(padded, axis=1)


def evaluate_settings(config, model, params, workdir: str, classifier, real_acc: float) -> dict:
    """Samples every demo setting on the same images and measures the quality proxy."""
    dc = config.demo
    k = int(config.model.num_classes)
    n = k * int(dc.eval_images_per_class)
    indices = np.arange(n)
    labels = jnp.asarray(indices % k, jnp.int32)
    keys = builders.per_image_keys(jax.random.fold_in(jax.random.key(int(config.seed)), 7), indices)
    data_seed = int(config.data.get("synthetic_seed", 0) or 0)
    ds = ShapesDataset(int(config.data.image_size), k, seed=data_seed)
    real = ds.render_batch(_REAL_OFFSET + indices)["image"]
    names = ds.class_names
    results, panels = {}, []
    for name, cfg_scale, nag_scale in dc.settings:
        c = _setting_config(config, cfg_scale, nag_scale)
        images, ips = sample_setting(c, model, params, keys, labels)
        quality = proxy.quality_metrics(classifier, k, images, np.asarray(labels), real)
        results[name] = dict(
            cfg_scale=float(cfg_scale),
            nag_scale=float(nag_scale),
            branches=len(builders.build_guidance(c.sample).branches),
            images_per_sec=round(ips, 2),
            **{key: round(v, 4) for key, v in quality.items()},
        )
        logging.info("demo %-8s %s", name, results[name])
        title = f"{name}: s_cfg={cfg_scale:g}, w_nag={nag_scale:g}"
        grid = labelled_grid(images, np.asarray(labels), names, int(dc.seeds_per_class), title)
        save_png(os.path.join(workdir, f"grid_{name.replace('+', '_')}.png"), grid)
        # The README figure: one colour per shape (red disk, green square, blue triangle, ...).
        subset = [kk for kk in range(k) if kk % 4 == (kk // 4) % 4]
        panel = _subset_panel(images, np.asarray(labels), names, subset, title)
        panels.append(panel)
    save_png(os.path.join(workdir, "comparison.png"), side_by_side(panels))
    return dict(
        settings=results,
        classifier_accuracy_on_real=round(real_acc, 4),
        num_images_per_setting=n,
        sampler=dict(
            kind=config.sample.sampler,
            num_steps=int(config.sample.num_steps),
            method=config.sample.get("method", "euler"),
        ),
    )


def _subset_panel(images, labels, names, classes, title, seeds: int = 4):
    order = np.concatenate([np.flatnonzero(labels == kk)[:seeds] for kk in classes])
    remap = {kk: i for i, kk in enumerate(classes)}
    sub_labels = np.array([remap[int(label)] for label in labels[order]])
    return labelled_grid(images[order], sub_labels, [names[kk] for kk in classes], seeds, title)


def run(config, workdir: str) -> dict:
    """Trains (or resumes) the demo model, then writes grids and metrics.json. Returns metrics."""
    from nag_jax.training import train

    start = time.time()
    os.makedirs(workdir, exist_ok=True)
    size, k = int(config.data.image_size), int(config.model.num_classes)
    logging.info("[1/3] Quality-proxy classifier (real shapes, %dpx, %d classes)", size, k)
    classifier, real_acc = proxy.load_or_train(
        size,
        k,
        seed=int(config.demo.get("proxy_seed", 0)),
        path=os.path.join(workdir, f"proxy_classifier_{proxy.ARCH}.npz"),
    )
    logging.info("[2/3] Training %s for %d steps", config.model.name, int(config.train.num_steps))
    t0 = time.time()
    state = train.run(config, workdir)
    train_seconds = time.time() - t0
    logging.info("[3/3] Sampling %d settings", len(config.demo.settings))
    model = builders.build_model(config.model)
    metrics = evaluate_settings(config, model, state.ema_params, workdir, classifier, real_acc)
    metrics["training"] = dict(
        steps=int(jax.device_get(state.step)),
        global_batch_size=int(config.data.global_batch_size),
        seconds=round(train_seconds, 1),
    )
    metrics["total_seconds"] = round(time.time() - start, 1)
    metrics["devices"] = f"{jax.device_count()} x {jax.devices()[0].device_kind}"
    tmp = os.path.join(workdir, "metrics.json.tmp")
    with open(tmp, "w") as f:
        json.dump(metrics, f, indent=2)
    os.replace(tmp, os.path.join(workdir, "metrics.json"))
    logging.info("Demo done in %.0fs: %s", metrics["total_seconds"], os.path.abspath(workdir))
    return metrics
