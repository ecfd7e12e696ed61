"""DiT-XL/2 (ImageNet 256px release) fine-tuned on a fine-grained dataset, with or without NAG.

    python -m nag_jax.main --config=configs/finetune_fine_grained.py:food101 \
        --workdir=runs/ft_food101 --config.model.weights=ckpt/dit_xl2_256 \
        --config.data.data_dir=data/latents/food101

First, once per dataset, encode its training images with the SD-VAE (tfds data in TFDS_DIR, or
an image folder root/<class>/*.jpg for df20m / artbench):

    python -m nag_jax.main --config=configs/finetune_fine_grained.py:food101,encode \
        --workdir=runs/encode_food101 --config.encode.image_data_dir=TFDS_DIR \
        --config.vae.path=ckpt/sd-vae-ft-ema --config.encode.out_dir=data/latents/food101

Variant ``DATASET[,nonag][,encode]``; DATASET is one of the paper's seven:
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

from nag_jax.training.defaults import encode_variant, release_config

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


def get_config(arg: str = "food101"):
    parts = [p for p in (arg or "food101").split(",") if p]
    dataset, flags = parts[0], set(parts[1:])
    if dataset not in DATASETS or flags - {"nonag", "encode"}:
        raise ValueError(
            f"Variant {arg!r}: expected DATASET[,nonag][,encode] with DATASET in "
            f"{sorted(DATASETS)}."
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
    return encode_variant(c) if "encode" in flags else c
