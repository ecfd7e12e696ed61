"""DiT-XL/2 (ImageNet 256px release) fine-tuned on a fine-grained dataset, with or without NAG.

    python -m nag_jax.main --config=configs/finetune_fine_grained.py:food101 \
        --workdir=runs/ft_food101 --config.model.weights=ckpt/dit_xl2_256 \
        --config.data.data_dir=data/latents/food101

First, once per dataset, encode its training images with the SD-VAE (tfds data in TFDS_DIR, or
an image folder root/<class>/*.jpg for df20m / artbench):

    python -m nag_jax.main --config=configs/finetune_fine_grained.py:food101,encode \
        --workdir=runs/encode_food101 --config.encode.image_data_dir=TFDS_DIR \
        --config.vae.path=ckpt/sd-vae-ft-ema --config.encode.out_dir=data/latents/food101

The paper's Table 2 (six rows: FT, FT + NAG, FT w/ CFG, + NAG, FT w/ DoG, + NAG; FID on 10k
samples) in ONE command, once both fine-tunes exist (the command above, into runs/ft_food101,
and its ``nonag`` twin into runs/ft_food101_nonag; the released DiT-XL/2 is the pre-trained
model of Domain Guidance):

    python -m nag_jax.main --config=configs/finetune_fine_grained.py:food101,table \
        --workdir=runs/table_food101 --config.model.domain_weights=ckpt/dit_xl2_256 \
        --config.vae.path=ckpt/sd-vae-ft-ema --config.eval.inception_path=fid.npz \
        --config.data.data_dir=TFDS_DIR

(mode "sweep" in table mode: the six pre-registered rows, one compiled sampler, each row's
10k images scored against 10k real images of the dataset; FT rows sample the ``nonag``
fine-tune, "+ NAG" rows the NAG one, as in the paper; resumable row by row.)

The same table in miniature on CPU (no downloads): the demo's base model (nag_jax/assets/
demo_base, trained on the shapes) is the pre-trained model; the target domain is the shapes in
four NEW colours (``synthetic_variant="recoloured"``); the fine-tune is the demo's NAG recipe
(600 steps, p_noise_drop 0.2), and the rows are scored with the proxy classifier trained on
recoloured shapes (class accuracy, proxy FD; not FID):

    python -m nag_jax.main --config=configs/finetune_fine_grained.py:shapes \
        --workdir=runs/ft_shapes
    python -m nag_jax.main --config=configs/finetune_fine_grained.py:shapes,table \
        --workdir=runs/table_shapes

Scales are pre-registered: the demo's validation-chosen scales, read from configs/demo.py's
rows (now CFG 1.25; NAG 0.25 on noise levels [0, 0.5]; CFG+NAG 1.125 + 0.25), and DoG takes
CFG's scales (omega 1.25 alone, 1.125 with NAG), never tuned on the reported seeds. In the miniature every row samples the
one NAG fine-tune (as the demo's Table 1 does); on the pod the FT rows use the ``nonag`` model.
On the pod the scales are those of the DiT releases' FID setting (CFG 1.5) and the project's
DiT-XL/2 NAG scale (1.5); DoG likewise 1.5 (the DoG release's CFG-style default). These are
assumptions stated here, not the paper's (it does not list them).

Variant ``DATASET[,nonag][,encode]`` or ``DATASET,table``; DATASET is ``shapes`` (the miniature)
or one of the paper's seven:
  food101 (tfds "food101", 101 classes)      sun397 (tfds "sun397", 397)
  caltech101 (tfds "caltech101", 102)        caltech_birds2011 (tfds "caltech_birds2011", 200)
  cars196 (tfds "cars196", 196)              df20m (image folder, Danish Fungi DF20-Mini, 182)
  artbench (image folder, ArtBench-10, 10)
``nonag`` is the paper's baseline (no noise-condition dropout: p_noise_drop 0); the default
trains with p_noise_drop 0.1 and a learned null noise token (mean-t-embedding init).

The ImageNet label table does not fit the new classes: ``train.reinit`` re-initialises
``y_embedder`` (N(0, 0.02), null row included); every other weight starts from the release.
Schedule (an assumption following Domain Guidance's fine-tuning protocol, which the paper's
ablation builds on): 24k steps at global batch 32, AdamW lr 1e-4, wd 0, EMA 0.9999.
Evaluate with 10k samples (FID) as in the paper's table.

Time convention: DiT, integer step 0..999 (0 = least noise); noise level = (step + 1) / 1000.
"""

import os

from nag_jax.config.release import encode_variant, release_config
from nag_jax.config.schema import sibling_module

# dataset -> (data source name for the encode step, number of classes)
DATASETS = {
    "food101": ("food101", 101),
    "sun397": ("sun397", 397),
    "caltech101": ("caltech101", 102),
    "caltech_birds2011": ("caltech_birds2011", 200),
    "cars196": ("cars196", 196),
    "df20m": ("image_folder", 182),
    "artbench": ("image_folder", 10),
}


def _demo_config():
    module = sibling_module(__file__, "demo")
    return module, module.get_config()


def table_points(s_cfg, w_nag, s_dog, nag_interval, ft_nag, ft_base, joint=None):
    """The six rows of Table 2 as sweep points: FT rows sample ``ft_base``, "+ NAG" rows
    ``ft_nag``; ``joint`` = (s_cfg, s_dog) used together with NAG (None: the same scales)."""
    js, jd = joint or (s_cfg, s_dog)
    iv = tuple(nag_interval)
    return (
        dict(name="FT", weights=ft_base),
        dict(name="FT + NAG", nag_scale=w_nag, nag_interval=iv, weights=ft_nag),
        dict(name="FT w/ CFG", cfg_scale=s_cfg, weights=ft_base),
        dict(name="FT w/ CFG + NAG", cfg_scale=js, nag_scale=w_nag, nag_interval=iv,
             weights=ft_nag),
        dict(name="FT w/ DoG", dog_scale=s_dog, weights=ft_base),
        dict(name="FT w/ DoG + NAG", dog_scale=jd, nag_scale=w_nag, nag_interval=iv,
             weights=ft_nag),
    )  # fmt: skip


def shapes_config(flags: set):
    """The CPU miniature: the demo model fine-tuned on recoloured shapes; ``table``: the rows."""
    demo, c = _demo_config()
    c.mode = "train"
    c.data.synthetic_variant = "recoloured"
    if "table" not in flags:
        return c  # the demo's NAG fine-tune (600 steps from demo_base), on the new colours
    ft = os.path.join("runs", "ft_shapes", "checkpoints")
    c.mode = "sweep"
    c.model.weights = ft
    c.model.domain_weights = demo.BASE_MODEL
    c.sample.labels = tuple(range(c.model.num_classes))  # cycled, as the demo's rows
    c.eval.update(
        extractor="proxy",
        reference="dataset",
        reference_num_images=1024,
        batch_size=128,
        feature_batch_size=256,
        pr_block_size=2048,
    )
    # The demo's scales (chosen on its validation seeds, committed before any report seed):
    # DoG takes CFG's s, and with NAG the demo's smaller joint s.
    rows = {r["name"]: r for r in c.demo.settings}
    s, js = rows["CFG"]["cfg_scale"], rows["CFG+NAG"]["cfg_scale"]
    w, iv = rows["NAG"]["nag_scale"], rows["NAG"]["nag_interval"]
    c.sweep.update(
        points=table_points(s, w, s, iv, ft_nag="", ft_base="", joint=(js, js)),
        val_seeds=(),  # table mode: pre-registered rows on the report seeds
        report_seeds=(0, 1, 2),
        num_images=128,
        metric="fid",  # the proxy's Fréchet distance (reported as proxy_fd)
    )  # fmt: skip
    return c


def get_config(arg: str = "food101"):
    parts = [p for p in (arg or "food101").split(",") if p]
    dataset, flags = parts[0], set(parts[1:])
    if dataset == "shapes" and flags <= {"table"}:
        return shapes_config(flags)
    if dataset not in DATASETS or flags - {"nonag", "encode"} and flags != {"table"}:
        raise ValueError(
            f"Variant {arg!r}: expected DATASET[,nonag][,encode] or DATASET,table with DATASET "
            f"in {sorted(DATASETS)}, or shapes[,table]."
        )
    source, num_classes = DATASETS[dataset]
    c = release_config("DiT-XL/2")
    c.model.num_classes = num_classes
    c.data.num_classes = num_classes
    c.data.global_batch_size = 32
    c.encode.image_source = source
    c.objective.p_noise_drop = 0.0 if "nonag" in flags else 0.1
    c.model.null_noise = "zero" if "nonag" in flags else "learned"
    c.train.num_steps = 24_000
    c.train.checkpoint_every = 2_000
    c.train.sample_every = 2_000
    c.train.reinit = r"^y_embedder/"
    c.sample.num_images = 16
    if "table" in flags:
        return table_config(c, dataset, source)
    return encode_variant(c) if "encode" in flags else c


def table_config(c, dataset: str, source: str):
    """mode "sweep" in table mode: the six rows on 10k images each, FID against 10k real images
    of the dataset (config.data becomes the image source; set --config.data.data_dir)."""
    c.mode = "sweep"
    ft_nag = os.path.join("runs", f"ft_{dataset}", "checkpoints")
    ft_base = os.path.join("runs", f"ft_{dataset}_nonag", "checkpoints")
    c.model.weights = ft_nag
    c.model.null_noise = "learned"  # the nonag rows get a zero token (never used: w_nag = 0)
    c.sample.update(sampler="ddpm", num_steps=250)
    c.data.update(name=source, image_size=256)
    c.eval.update(
        extractor="inception",
        reference="dataset",
        reference_num_images=10_000,
        num_images=10_000,
        batch_size=256,
    )
    c.sweep.update(
        points=table_points(1.5, 1.5, 1.5, (0.0, 1.0), ft_nag=ft_nag, ft_base=ft_base),
        val_seeds=(),
        report_seeds=(0,),
        num_images=10_000,
        metric="fid",
    )
    return c
