"""The built-in demo (``configs/demo.py``): the paper's recipe in miniature on the shapes set.

    python -m nag_jax.main --config=configs/demo.py --workdir=runs/demo

1. a quality-proxy classifier trained on real shapes (``nag_jax.evaluation.proxy``);
2. the short NAG fine-tune: a small SiT trained WITHOUT noise-condition dropout (the releases'
   situation; shipped as ``nag_jax/assets/demo_base``, reproduced by ``configs/demo_pretrain.py``)
   is fine-tuned for a few % of its steps with noise-condition dropout, which trains the
   noise-unconditional branch (the null noise token is created as the mean timestep embedding);
3. the same images sampled with none / CFG / NAG / CFG+NAG on several held-out seeds, scored by
   the proxy, printed as a table with standard errors and paired differences.

Writes into the workdir: ``grid_<setting>.png`` (rows = classes, columns = images of the first
seed), ``comparison.png`` (the four settings side by side), ``metrics.json`` (per seed, mean, SE,
paired differences) and ``table.md``.

Image identity (``nag_jax.sampling.generate``): image i of seed s has key ``generate.image_keys(s,
i)`` and
label ``i % num_classes`` (the class table cycled), so every setting samples the SAME images and
rows differ only by guidance; a difference between rows is measured per seed (paired).
Time convention: SiT, t = 0 noise, t = 1 data; guidance intervals are noise levels (1 = noise).
"""

from __future__ import annotations

import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from nag_jax.data.synthetic import ShapesDataset
from nag_jax.evaluation import proxy
from nag_jax.sampling import build, generate
from nag_jax.storage import weights
from nag_jax.storage.paths import as_path
from nag_jax.utils import make_grid, save_png, to_uint8

# Real reference images come from indices no training batch can draw.
_REAL_OFFSET = 2**41
METRICS = ("class_accuracy", "proxy_fd", "precision", "recall")


@dataclasses.dataclass(frozen=True)
class Row:
    """One guidance setting: scales, the NAG interval (noise levels) and the sampler's steps."""

    name: str
    cfg_scale: float = 1.0
    nag_scale: float = 0.0
    nag_interval: tuple[float, float] = (0.0, 1.0)
    num_steps: int | None = None  # None: config.sample.num_steps

    @classmethod
    def from_config(cls, entry) -> Row:
        """``(name, s_cfg, w_nag)`` or a dict with Row's fields -> Row."""
        if isinstance(entry, dict) or hasattr(entry, "to_dict"):
            d = dict(entry.to_dict() if hasattr(entry, "to_dict") else entry)
            if "nag_interval" in d:
                d["nag_interval"] = tuple(float(v) for v in d["nag_interval"])
            return cls(**d)
        name, cfg_scale, nag_scale = entry
        return cls(str(name), float(cfg_scale), float(nag_scale))


class RowSampler:
    """Samples rows with one compiled sampler per branch set (the scales are traced).

    CFG and NAG branches are switched on statically by whether a row uses them (an off branch is
    not computed); the scale values are run-time arguments, so a sweep over scales compiles once.
    Keys and labels are sharded over all local devices along the batch.
    """

    def __init__(self, config, model):
        self.config, self.model = config, model
        self._compiled = {}
        self.mesh = jax.sharding.Mesh(np.array(jax.local_devices()), ("data",))
        self._placed = (None, None)  # (the params given, their replicated copy)

    def _replicated(self, params):
        from jax.sharding import NamedSharding, PartitionSpec

        if self._placed[0] is not params:
            rep = NamedSharding(self.mesh, PartitionSpec())
            self._placed = (params, jax.device_put(params, rep))
        return self._placed[1]

    def _fn(self, row: Row, params, keys, labels):
        steps = int(row.num_steps or self.config.sample.num_steps)
        sig = (row.cfg_scale != 1.0, row.nag_scale != 0.0, row.nag_interval, steps, len(labels))
        if sig not in self._compiled:
            c = self.config.copy_and_resolve_references()
            c.sample.cfg_scale = 2.0 if sig[0] else 1.0  # any value that switches the branch on
            c.sample.nag_scale = 1.0 if sig[1] else 0.0
            c.sample.nag_interval = row.nag_interval
            c.sample.num_steps = steps
            fn = jax.jit(build.build_sampler(c, self.model))
            scales = (jnp.float32(1.0), jnp.float32(0.0))
            start = time.perf_counter()
            compiled = fn.lower(params, keys, labels, scales).compile()
            logging.info(
                "compiled sampler %s in %.1fs",
                dict(zip(("cfg", "nag", "interval", "steps", "batch"), sig)),
                time.perf_counter() - start,
            )
            self._compiled[sig] = compiled
        return self._compiled[sig]

    def __call__(self, row: Row, params, seed: int, num_images: int):
        """(images (N, H, W, C) numpy float32, labels (N,) numpy, images/s of the sampler)."""
        from jax.sharding import NamedSharding, PartitionSpec

        batch = NamedSharding(self.mesh, PartitionSpec("data"))
        params = self._replicated(params)
        keys, labels = jax.device_put(
            image_batch(seed, num_images, int(self.model.num_classes)), batch
        )
        fn = self._fn(row, params, keys, labels)
        scales = (jnp.float32(row.cfg_scale), jnp.float32(row.nag_scale))
        start = time.perf_counter()
        images = jax.block_until_ready(fn(params, keys, labels, scales))
        seconds = time.perf_counter() - start
        return np.asarray(images), np.asarray(labels), num_images / seconds


def image_batch(seed: int, num_images: int, num_classes: int):
    """(keys (N,), labels (N,) int32) of images 0..N-1 of ``seed``: the
    ``nag_jax.sampling.generate``
    identity with the class table cycled (label = i % num_classes, every class equally often)."""
    indices = np.arange(num_images)
    labels = generate.image_labels(seed, indices, num_classes, range(num_classes))
    return generate.image_keys(seed, indices), labels


def real_reference(config, num_images: int) -> np.ndarray:
    """(N, S, S, 3) real shapes, class-balanced, from indices no training batch draws."""
    k = int(config.model.num_classes)
    ds = ShapesDataset(int(config.data.image_size), k, seed=int(config.data.synthetic_seed))
    return ds.render_batch(_REAL_OFFSET + np.arange(num_images))["image"]


def evaluate_rows(
    sampler: RowSampler, params, rows, seeds, num_images: int, scorer, on_images=None
) -> dict:
    """Samples every row on every seed and scores it: {row name: {metric: [per seed]}}.

    The same seed gives the same images (keys, labels) in every row, so per-seed differences
    between rows are paired. ``on_images(row, seed, images, labels)``, if given, sees every batch
    (the demo draws its grids from the first seed's images instead of sampling them again).
    """
    out = {}
    for row in rows:
        per = {m: [] for m in (*METRICS, "images_per_sec")}
        for seed in seeds:
            images, labels, ips = sampler(row, params, seed, num_images)
            if on_images is not None:
                on_images(row, seed, images, labels)
            for m, v in scorer(images, labels).items():
                per[m].append(float(v))
            per["images_per_sec"].append(float(ips))
        out[row.name] = dict(row=dataclasses.asdict(row), per_seed=per)
        stats = {m: mean_se(per[m]) for m in METRICS}
        logging.info(
            "%-10s %s", row.name, ", ".join(f"{m} {v[0]:.4g}+-{v[1]:.2g}" for m, v in stats.items())
        )
    return out


def mean_se(values) -> tuple[float, float]:
    v = np.asarray(values, np.float64)
    se = float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")
    return float(v.mean()), se


def summarize(results: dict, comparisons) -> dict:
    """Means and standard errors over seeds, and paired differences ``a - b`` with their SE.

    ``comparisons``: ``[(a, b), ...]`` row names. A difference's SE is the standard error of the
    per-seed differences (the seeds are shared, so it is smaller than combining the rows' SEs).
    """
    summary = {"rows": {}, "differences": {}}
    for name, r in results.items():
        summary["rows"][name] = {
            m: dict(zip(("mean", "se"), mean_se(v))) for m, v in r["per_seed"].items()
        }
    for a, b in comparisons:
        if a not in results or b not in results:
            continue
        diffs = {}
        for m in METRICS:
            d = np.subtract(results[a]["per_seed"][m], results[b]["per_seed"][m])
            mean, se = mean_se(d)
            diffs[m] = dict(mean=mean, se=se, z=mean / se if se > 0 else float("nan"))
        summary["differences"][f"{a} - {b}"] = diffs
    return summary


def format_table(results: dict, summary: dict, num_seeds: int, num_images: int) -> str:
    """Markdown: one line per row (mean +- SE over seeds), then the paired differences."""
    fmt = {"class_accuracy": ".3f", "proxy_fd": ".2f", "precision": ".3f", "recall": ".3f"}
    lines = [
        f"mean +- standard error over {num_seeds} seeds x {num_images} images",
        "",
        "| setting | s_cfg | w_nag | class acc | proxy FD | precision | recall | images/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        s = summary["rows"][name]
        cells = [f"{s[m]['mean']:{fmt[m]}} +- {s[m]['se']:{fmt[m]}}" for m in METRICS]
        row = r["row"]
        nag = f"{row['nag_scale']:g}"
        if row["nag_scale"] and tuple(row["nag_interval"]) != (0.0, 1.0):
            nag += " on [{:g}, {:g}]".format(*row["nag_interval"])
        lines.append(
            f"| {name} | {row['cfg_scale']:g} | {nag} | "
            + " | ".join(cells)
            + f" | {s['images_per_sec']['mean']:.1f} |"
        )
    if summary["differences"]:
        lines += ["", "| paired difference | class acc | proxy FD (z) | precision | recall |"]
        lines.append("|---|---|---|---|---|")
        for label, d in summary["differences"].items():
            cells = [f"{d[m]['mean']:+{fmt[m]}} +- {d[m]['se']:{fmt[m]}}" for m in METRICS]
            cells[1] += f" ({d['proxy_fd']['z']:+.1f})"
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


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


def _subset_panel(images, labels, names, classes, title, seeds: int = 4):
    order = np.concatenate([np.flatnonzero(labels == kk)[:seeds] for kk in classes])
    remap = {kk: i for i, kk in enumerate(classes)}
    sub_labels = np.array([remap[int(label)] for label in labels[order]])
    return labelled_grid(images[order], sub_labels, [names[kk] for kk in classes], seeds, title)


class GridWriter:
    """``on_images`` callback of `evaluate_rows`: grid_<row>.png from the first seed's images
    (rows = classes, ``per_class`` columns) and the panels of comparison.png."""

    def __init__(self, config, workdir: str):
        k = int(config.model.num_classes)
        self.names = ShapesDataset(int(config.data.image_size), k).class_names
        self.seed = int(config.demo.seeds[0])
        self.per_class = int(config.demo.grid_images_per_class)
        self.workdir = workdir
        self.panels = []

    def __call__(self, row: Row, seed: int, images, labels) -> None:
        if seed != self.seed:
            return
        title = f"{row.name}: s_cfg={row.cfg_scale:g}, w_nag={row.nag_scale:g}"
        if row.nag_scale and row.nag_interval != (0.0, 1.0):
            title += " on noise [{:g}, {:g}]".format(*row.nag_interval)
        grid = labelled_grid(images, labels, self.names, self.per_class, title)
        save_png(os.path.join(self.workdir, f"grid_{row.name.replace('+', '_')}.png"), grid)
        # The README figure: one colour per shape (red disk, green square, blue triangle, ...).
        k = len(self.names)
        subset = [kk for kk in range(k) if kk % 4 == (kk // 4) % 4]
        self.panels.append(_subset_panel(images, labels, self.names, subset, title))

    def write_comparison(self) -> np.ndarray:
        """Saves comparison.png; returns it (uint8 HWC)."""
        image = side_by_side(self.panels)
        save_png(os.path.join(self.workdir, "comparison.png"), image)
        return image


def write_tensorboard(config, workdir: str, step: int, summary: dict, comparison) -> None:
    """The settings' means over seeds (``demo/<row>/<metric>``), the paired differences
    (``demo/<a - b>/<metric>``) and the comparison figure, at the fine-tune's last step, beside
    the training curves (config.train.tensorboard)."""
    from nag_jax.training.metrics import create_writer

    writer = create_writer(
        workdir,
        just_logging=jax.process_index() > 0,
        tensorboard=bool(config.train.tensorboard),
    )
    scalars = {
        f"demo/{row}/{m}": v["mean"] for row, ms in summary["rows"].items() for m, v in ms.items()
    }
    for pair, ms in summary["differences"].items():
        scalars.update({f"demo/{pair.replace(' ', '')}/{m}": v["mean"] for m, v in ms.items()})
    writer.write_scalars(step, scalars)
    writer.write_images(step, {"demo/comparison": np.asarray(comparison)[None]})
    writer.close()


def load_scorer(config, workdir: str) -> proxy.ProxyScorer:
    """The quality proxy: classifier (trained once, cached in the workdir) + real reference."""
    size, k = int(config.data.image_size), int(config.model.num_classes)
    classifier, real_acc = proxy.load_or_train(
        size,
        k,
        seed=int(config.demo.proxy_seed),
        path=os.path.join(workdir, f"proxy_classifier_{proxy.ARCH}.npz"),
    )
    real = real_reference(config, int(config.demo.num_real))
    return proxy.ProxyScorer.from_real(classifier, k, real, real_accuracy=real_acc)


def export_base(config, checkpoints: str, dest: str, *, step: int | None = None, force=False):
    """Writes a training run's EMA params WITHOUT the null noise token to ``dest``, as a release.

    ``checkpoints``: a training workdir's ``checkpoints/`` directory; ``step``: the step to take
    (None: the latest). The result has the converter's layout (params + metadata) and no null
    token, like a converted DiT/SiT release: the NAG fine-tune creates the token. This is how
    ``nag_jax/assets/demo_base`` was made from the configs/demo_pretrain.py run.
    """
    from nag_jax.training.finetune import NULL_TOKEN

    steps = sorted(int(d) for d in os.listdir(checkpoints) if d.isdigit())
    if not steps or (step is not None and int(step) not in steps):
        raise FileNotFoundError(
            f"{checkpoints} has no checkpoint step {step if step is not None else ''}; "
            f"steps found: {steps}. Point at a training workdir's checkpoints/ directory."
        )
    step = int(step) if step is not None else steps[-1]
    params = dict(weights.load_params(os.path.join(checkpoints, str(step), "ema_params"))[0])
    params.pop(NULL_TOKEN, None)
    m = config.model
    patch = int(params["x_embedder"]["proj"]["kernel"].shape[0])
    meta = dict(  # the converter's metadata fields (nag_jax.convert.common.Architecture)
        family=str(m.name).split("-")[0],
        model=str(m.name),
        custom_size=True,
        input_size=int(m.input_size),
        in_channels=int(m.in_channels),
        out_channels=int(m.in_channels) * (2 if m.learn_sigma else 1),
        num_classes=int(m.num_classes),
        learn_sigma=bool(m.learn_sigma),
        hidden_size=int(m.hidden_size),
        depth=int(m.depth),
        num_heads=int(m.num_heads),
        patch_size=patch,
        mlp_hidden=int(params["blocks_0"]["mlp"]["fc1"]["kernel"].shape[1]),
        null_noise=None,
        source=str(as_path(checkpoints)),
        step=step,
        weights="ema",
    )
    weights.save_params(dest, params, meta, force=force)
    return dest


def run(config, workdir: str) -> dict:
    """Fine-tunes (or trains, or resumes) the demo model, samples the rows, writes the table."""
    from nag_jax.training import loop as train

    start = time.time()
    as_path(workdir).mkdir(parents=True, exist_ok=True)
    dc = config.demo
    logging.info("[1/3] Quality-proxy classifier and real reference")
    scorer = load_scorer(config, workdir)
    what = "Fine-tuning" if config.model.weights else "Training"
    logging.info(
        "[2/3] %s %s for %d steps (p_noise_drop=%g, trainable=%s)%s",
        what,
        config.model.name,
        int(config.train.num_steps),
        float(config.objective.p_noise_drop),
        config.optim.trainable,
        f" from {config.model.weights}" if config.model.weights else "",
    )
    t0 = time.time()
    state = train.run(config, workdir)
    train_seconds = time.time() - t0
    rows = [Row.from_config(r) for r in dc.settings]
    seeds = [int(s) for s in dc.seeds]
    n = int(dc.images_per_seed)
    logging.info("[3/3] Sampling %d settings x %d seeds x %d images", len(rows), len(seeds), n)
    model = build.build_model(config.model)
    sampler = RowSampler(config, model)
    params = state.ema_params
    grids = GridWriter(config, workdir)
    results = evaluate_rows(sampler, params, rows, seeds, n, scorer, on_images=grids)
    comparison = grids.write_comparison()
    summary = summarize(results, [tuple(c) for c in dc.comparisons])
    write_tensorboard(config, workdir, int(jax.device_get(state.step)), summary, comparison)
    table = format_table(results, summary, len(seeds), n)
    metrics = dict(
        results=results,
        summary=summary,
        classifier_accuracy_on_real=round(scorer.real_accuracy, 4),
        seeds=seeds,
        images_per_seed=n,
        sampler=dict(
            kind=config.sample.sampler,
            num_steps=int(config.sample.num_steps),
            method=config.sample.method,
        ),
        training=dict(
            weights=config.model.weights,
            steps=int(jax.device_get(state.step)),
            global_batch_size=int(config.data.global_batch_size),
            p_noise_drop=float(config.objective.p_noise_drop),
            trainable=config.optim.trainable,
            seconds=round(train_seconds, 1),
        ),
        devices=f"{jax.device_count()} x {jax.devices()[0].device_kind}",
    )
    metrics["total_seconds"] = round(time.time() - start, 1)
    weights.write_json(os.path.join(workdir, "metrics.json"), metrics, force=True)
    (as_path(workdir) / "table.md").write_text(table + "\n")
    print(table, flush=True)
    logging.info("Demo done in %.0fs: %s", metrics["total_seconds"], workdir)
    return metrics
