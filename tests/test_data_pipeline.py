"""Tests for the grain pipelines, sources and preprocessing (nag_jax.data)."""

import os

import numpy as np
import pytest
from PIL import Image

from nag_jax.config import schema
from nag_jax.data import latents as latents_lib
from nag_jax.data.pipeline import create_dataset, dataset_info, local_batch_size
from nag_jax.data.preprocess import center_crop_arr, flip_decisions, to_float
from nag_jax.data.sources import ImageFolderSource, TfdsSource


def _cfg(**kw):
    base = dict(name="synthetic_shapes", image_size=16, num_examples=40, return_index=True)
    base.update(kw)
    return schema.complete(base, "data")  # a hand-built section gets the schema's defaults


def _take(it, k):
    return [next(it) for _ in range(k)]


# ----------------------------------------------------------------------------- preprocessing


def test_center_crop_box_downsample_matches_block_mean():
    """12x8 (W x H) -> size 4: one BOX halving to 6x4 (= 2x2 block means), no-op resize, crop."""
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(8, 12, 3), dtype=np.uint8)
    out = center_crop_arr(img, 4)
    blocks = img.astype(np.float64).reshape(4, 2, 6, 2, 3).mean((1, 3))  # (4, 6, 3)
    expected = blocks[:, 1:5]  # crop_x = (6 - 4) // 2 = 1, crop_y = 0
    assert out.shape == (4, 4, 3) and out.dtype == np.uint8
    # PIL's fixed-point BOX filter rounds up to 1 level away from the exact mean.
    np.testing.assert_allclose(out.astype(np.float64), expected, atol=1.0)
    ref = np.asarray(Image.fromarray(img).resize((6, 4), Image.BOX))[:, 1:5]
    np.testing.assert_array_equal(out, ref)


def test_center_crop_bicubic_path_matches_pil():
    """7x5 -> size 4: no halving (5 < 8), BICUBIC to round(7*4/5)=6 x 4, crop x offset 1."""
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    out = center_crop_arr(img, 4)
    ref = np.asarray(Image.fromarray(img).resize((6, 4), resample=Image.BICUBIC))[:, 1:5]
    np.testing.assert_array_equal(out, ref)
    # Larger: 40x20 -> 4: halvings while min side >= 8: 20 -> 10 -> 5 (two), then bicubic.
    img = rng.integers(0, 256, size=(20, 40, 3), dtype=np.uint8)
    step = Image.fromarray(img).resize((20, 10), Image.BOX).resize((10, 5), Image.BOX)
    ref = np.asarray(step.resize((8, 4), Image.BICUBIC))[:, 2:6]
    np.testing.assert_array_equal(center_crop_arr(img, 4), ref)


def test_to_float_and_flip_decisions():
    np.testing.assert_allclose(to_float(np.array([0, 255])), [-1.0, 1.0])
    a = flip_decisions(0, 3, np.arange(1000))
    assert 400 < a.sum() < 600
    np.testing.assert_array_equal(a, flip_decisions(0, np.full(1000, 3), np.arange(1000)))
    assert (a != flip_decisions(0, 4, np.arange(1000))).mean() > 0.3  # new epoch, new flips


# ----------------------------------------------------------------------------- pipeline


def test_batches_have_the_contracted_shapes():
    it = create_dataset(_cfg(), seed=0, process_index=0, process_count=1, global_batch_size=8)
    b = next(it)
    assert b["image"].shape == (8, 16, 16, 3) and b["image"].dtype == np.float32
    assert b["label"].shape == (8,) and b["label"].dtype == np.int32
    assert b["image"].min() >= -1.0 and b["image"].max() <= 1.0
    np.testing.assert_array_equal(b["label"], b["index"] % 16)


def test_process_shards_are_disjoint_and_cover_the_epoch():
    """2 processes, 40 records, global batch 8: per epoch 20 records each = 5 local batches."""
    seen = []
    for p in range(2):
        it = create_dataset(_cfg(), seed=5, process_index=p, process_count=2, global_batch_size=8)
        batches = _take(it, 10)  # two epochs
        idx = np.concatenate([b["index"] for b in batches])
        ep = np.concatenate([b["epoch"] for b in batches])
        assert (ep[:20] == 0).all() and (ep[20:] == 1).all()
        e0, e1 = idx[:20], idx[20:]
        assert len(set(e0)) == 20 and set(e0) == set(e1)  # a permutation per epoch...
        assert not np.array_equal(e0, e1)  # ...reshuffled between epochs
        seen.append(set(e0))
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == set(range(40))


def test_uneven_dataset_is_trimmed_equally():
    seen = []
    for p in range(3):
        it = create_dataset(
            _cfg(num_examples=41), seed=0, process_index=p, process_count=3, global_batch_size=3
        )
        seen.append(np.concatenate([b["index"] for b in _take(it, 13)]))
    assert all(len(set(s)) == 13 for s in seen)
    assert set(np.concatenate(seen)) == set(range(39))


def test_deterministic_from_seed():
    a = next(create_dataset(_cfg(), seed=1, process_index=0, process_count=1, global_batch_size=8))
    b = next(create_dataset(_cfg(), seed=1, process_index=0, process_count=1, global_batch_size=8))
    c = next(create_dataset(_cfg(), seed=2, process_index=0, process_count=1, global_batch_size=8))
    np.testing.assert_array_equal(a["image"], b["image"])
    assert not np.array_equal(a["index"], c["index"])


def test_flips_are_applied_per_seed_epoch_index():
    cfg = _cfg(shuffle=False)
    b = next(create_dataset(cfg, seed=3, process_index=0, process_count=1, global_batch_size=40))
    from nag_jax.data.synthetic import ShapesDataset

    raw = ShapesDataset(16, 16, seed=0, size=40).render_batch(b["index"])["image"]
    flips = flip_decisions(3, 0, b["index"])
    assert 5 < flips.sum() < 35
    expected = np.where(flips[:, None, None, None], raw[:, :, ::-1], raw)
    np.testing.assert_array_equal(b["image"], expected)


def test_iterator_state_round_trip():
    kw = dict(seed=0, process_index=1, process_count=2, global_batch_size=6)
    it = create_dataset(_cfg(), **kw)
    _take(it, 3)
    state = it.get_state()
    after = _take(it, 5)  # crosses an epoch boundary (20 records / 3 per batch)
    it2 = create_dataset(_cfg(), **kw)
    it2.set_state(state)
    for a, b in zip(after, _take(it2, 5)):
        np.testing.assert_array_equal(a["index"], b["index"])
        np.testing.assert_array_equal(a["image"], b["image"])


def test_iterator_checkpoints_with_orbax(tmp_path):
    import grain
    import orbax.checkpoint as ocp

    kw = dict(seed=0, process_index=0, process_count=1, global_batch_size=4)
    it = create_dataset(_cfg(), **kw)
    _take(it, 2)
    with ocp.CheckpointManager(tmp_path / "ckpt", item_names=("data",)) as mngr:
        mngr.save(2, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
        mngr.wait_until_finished()
    expected = _take(it, 3)
    it2 = create_dataset(_cfg(), **kw)
    with ocp.CheckpointManager(tmp_path / "ckpt", item_names=("data",)) as mngr:
        mngr.restore(2, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(it2)))
    for a, b in zip(expected, _take(it2, 3)):
        np.testing.assert_array_equal(a["index"], b["index"])


@pytest.mark.slow  # ~10 s: starts worker processes
def test_worker_processes_give_the_same_stream():
    kw = dict(seed=0, process_index=0, process_count=1, global_batch_size=4)
    ref = _take(create_dataset(_cfg(), **kw), 6)
    it = create_dataset(_cfg(num_workers=2), **kw)
    got = _take(it, 2)
    state = it.get_state()  # the multi-worker state restores too
    got += _take(it, 4)
    it2 = create_dataset(_cfg(num_workers=2), **kw)
    it2.set_state(state)
    restored = _take(it2, 4)
    it.close()
    it2.close()
    for a, b in zip(ref, got):
        np.testing.assert_array_equal(a["image"], b["image"])
    for a, b in zip(ref[2:], restored):
        np.testing.assert_array_equal(a["index"], b["index"])


# ----------------------------------------------------------------------------- sources


def _write_folder(root, classes=("b_dog", "a_cat"), per_class=3, size=(20, 12)):
    rng = np.random.default_rng(0)
    images = {}
    for ci, cls in enumerate(classes):
        os.makedirs(root / cls, exist_ok=True)
        for j in range(per_class):
            arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
            ext = ".png" if j % 2 == 0 else ".webp"
            path = root / cls / f"{j}{ext}"
            Image.fromarray(arr).save(path, lossless=True) if ext == ".webp" else Image.fromarray(
                arr
            ).save(path)
            images[str(path)] = (arr, ci)
    (root / "README.txt").write_text("not an image")
    return images


def test_image_folder_source_and_pipeline(tmp_path):
    _write_folder(tmp_path)
    src = ImageFolderSource(str(tmp_path))
    assert src.class_names == ["a_cat", "b_dog"]  # sorted -> labels
    assert len(src) == 6
    np.testing.assert_array_equal(src.labels, [0, 0, 0, 1, 1, 1])
    ex = src[4]
    expected = np.asarray(Image.open(src.files[4]).convert("RGB"))
    np.testing.assert_array_equal(ex["image"], expected)
    assert "b_dog" in src.files[4]

    cfg = _cfg(name="image_folder", data_dir=str(tmp_path), image_size=8, random_flip=False)
    b = next(create_dataset(cfg, seed=0, process_index=0, process_count=1, global_batch_size=6))
    assert b["image"].shape == (6, 8, 8, 3)
    for img, k, y in zip(b["image"], b["index"], b["label"]):
        assert y == src.labels[k]
        np.testing.assert_allclose(img, to_float(center_crop_arr(src[int(k)]["image"], 8)))
    info = dataset_info(cfg)
    assert info["num_classes"] == 2 and info["example_shape"] == (8, 8, 3)


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist.*one subfolder per class"):
        ImageFolderSource(str(tmp_path / "nope"))
    (tmp_path / "x.png").write_bytes(b"")
    with pytest.raises(ValueError, match="no class subfolders"):
        ImageFolderSource(str(tmp_path))
    os.makedirs(tmp_path / "cls")
    with pytest.raises(ValueError, match="no images"):
        ImageFolderSource(str(tmp_path))


def test_batch_not_divisible_by_process_count():
    assert local_batch_size(256, 8) == 32
    with pytest.raises(
        ValueError, match="global_batch_size=10 is not divisible by process_count=4"
    ):
        create_dataset(_cfg(), seed=0, process_index=0, process_count=4, global_batch_size=10)


def test_tfds_missing_data_dir_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="ILSVRC2012_img_train.tar"):
        TfdsSource("imagenet2012", "train", str(tmp_path / "missing"))


# ----------------------------------------------------------------------------- latents


def _write_latents(tmp_path, n=10, variants=2, dtype="float16", scaled=True, per_shard=4):
    rng = np.random.default_rng(0)
    lat = rng.normal(size=(n, variants, 2, 3, 4)).astype(np.float32)
    labels = rng.integers(0, 7, size=n)
    shards = []
    num_shards = -(-n // per_shard)
    for s in range(num_shards):
        fn = latents_lib.shard_filename(s, num_shards)
        sl = slice(s * per_shard, (s + 1) * per_shard)
        latents_lib.write_shard(str(tmp_path / fn), labels[sl], lat[sl], dtype=dtype)
        shards.append({"file": fn, "count": len(labels[sl])})
    latents_lib.write_metadata(
        str(tmp_path),
        dict(
            latent_shape=[2, 3, 4],
            dtype=dtype,
            variants=["image", "hflip"][:variants],
            scale_factor=0.18215,
            scaled=scaled,
            count=n,
            num_classes=7,
            source="test",
            shards=shards,
        ),
    )
    return lat, labels


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_latents_write_read_round_trip(tmp_path, dtype):
    lat, labels = _write_latents(tmp_path, dtype=dtype)
    src = latents_lib.LatentsSource(str(tmp_path))
    assert len(src) == 10
    tol = {"float32": 0, "float16": 1e-3, "bfloat16": 1e-2}[dtype]
    for i in range(10):
        ex = src[i]
        assert ex["label"] == labels[i]
        assert ex["latents"].dtype == np.float32
        np.testing.assert_allclose(ex["latents"], lat[i], rtol=tol, atol=tol)


def test_latents_pipeline_uses_stored_flip_and_scale(tmp_path):
    lat, labels = _write_latents(tmp_path, dtype="float32", scaled=False)
    cfg = _cfg(name="latents", data_dir=str(tmp_path))
    b = next(create_dataset(cfg, seed=0, process_index=0, process_count=1, global_batch_size=10))
    assert b["image"].shape == (10, 2, 3, 4)
    flips = flip_decisions(0, 0, b["index"])
    assert 0 < flips.sum() < 10
    expected = lat[b["index"], flips.astype(int)] * np.float32(0.18215)
    np.testing.assert_allclose(b["image"], expected, rtol=1e-6)
    np.testing.assert_array_equal(b["label"], labels[b["index"]])


def test_latents_single_variant_flips_width(tmp_path):
    lat, _ = _write_latents(tmp_path, variants=1, dtype="float32")
    cfg = _cfg(name="latents", data_dir=str(tmp_path))
    b = next(create_dataset(cfg, seed=0, process_index=0, process_count=1, global_batch_size=10))
    flips = flip_decisions(0, 0, b["index"])
    raw = lat[b["index"], 0]
    np.testing.assert_allclose(
        b["image"], np.where(flips[:, None, None, None], raw[:, :, ::-1], raw)
    )


def test_latents_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist.*metadata.json"):
        latents_lib.LatentsSource(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="metadata.json is missing"):
        latents_lib.LatentsSource(str(tmp_path))


@pytest.mark.slow  # imports TensorFlow (~5 s)
def test_tfds_source_end_to_end_on_a_tiny_builder(tmp_path):
    """A tiny registered tfds builder prepared as array_record is read through the pipeline."""
    import tensorflow_datasets as tfds

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(6, 10, 14, 3), dtype=np.uint8)

    class NagTinyImages(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict(
                    {
                        "image": tfds.features.Image(shape=(10, 14, 3), encoding_format="png"),
                        "label": tfds.features.ClassLabel(names=["a", "b", "c"]),
                    }
                ),
            )

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for i in range(6):
                yield i, {"image": images[i], "label": i % 3}

    with pytest.raises(FileNotFoundError, match="is not prepared in data_dir"):
        TfdsSource("nag_tiny_images", "train", str(tmp_path))
    src = TfdsSource("nag_tiny_images", "train", str(tmp_path), prepare=True)
    assert len(src) == 6 and src.num_classes == 3
    got = {int(src[i]["label"]): src[i]["image"] for i in range(6)}
    assert all(any(np.array_equal(v, im) for im in images) for v in got.values())
    cfg = _cfg(name="nag_tiny_images", data_dir=str(tmp_path), image_size=8, random_flip=False)
    b = next(create_dataset(cfg, seed=0, process_index=0, process_count=1, global_batch_size=6))
    assert b["image"].shape == (6, 8, 8, 3)
    for img, k in zip(b["image"], b["index"]):
        np.testing.assert_allclose(img, to_float(center_crop_arr(src[int(k)]["image"], 8)))
