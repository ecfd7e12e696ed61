"""Tests for the resumable latent encoder (nag_jax.data.encode) and mode=encode_latents
(nag_jax.jobs.encode_latents)."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nag_jax.config import schema
from nag_jax.config.schema import base_config
from nag_jax.data.encode import encode_dataset
from nag_jax.data.latents import LatentsSource, read_metadata
from nag_jax.data.pipeline import create_dataset
from nag_jax.data.synthetic import ShapesDataset
from nag_jax.jobs import encode_latents


def fake_encode(params, images, key):
    """A stand-in VAE: 4x4 average pool to (h, w, 3), a 4th channel, scaled, plus key noise."""
    n, h, w, _ = images.shape
    pooled = images.reshape(n, h // 4, 4, w // 4, 4, 3).mean((2, 4))
    z = jnp.concatenate([pooled, pooled.mean(-1, keepdims=True)], -1) * params["scale"]
    return z + 0.01 * jax.random.normal(key, z.shape)


PARAMS = {"scale": jnp.float32(0.5)}


def _encode(out_dir, **kw):
    src = ShapesDataset(image_size=16, num_classes=16, seed=0, size=20)
    args = dict(
        encode_fn=fake_encode,
        params=PARAMS,
        image_size=16,
        batch_size=8,
        shard_size=8,
        dtype="float32",
        seed=0,
        log=lambda *_: None,
    )
    args.update(kw)
    return encode_dataset(src, str(out_dir), **args), src


class Interrupt(Exception):
    pass


def _interrupt_after_first(k):
    raise Interrupt(k)


def test_encode_writes_readable_shards(tmp_path):
    meta, src = _encode(tmp_path / "a")
    assert meta["count"] == 20 and meta["latent_shape"] == [4, 4, 4]
    assert [s["count"] for s in meta["shards"]] == [8, 8, 4]
    assert meta["variants"] == ["image", "hflip"] and meta["scaled"] is True
    lat = LatentsSource(str(tmp_path / "a"))
    assert len(lat) == 20
    ref = src.render_batch(np.arange(20))
    for i in (0, 9, 19):
        ex = lat[i]
        assert ex["label"] == ref["label"][i]
        img = ref["image"][i]
        pooled = img.reshape(4, 4, 4, 4, 3).mean((1, 3))
        expect = np.concatenate([pooled, pooled.mean(-1, keepdims=True)], -1) * 0.5
        np.testing.assert_allclose(ex["latents"][0], expect, atol=0.05)  # 0.01 * N(0,1) noise
        # Variant 1 is the encoding of the flipped image.
        np.testing.assert_allclose(ex["latents"][1], expect[:, ::-1], atol=0.05)
    # The latents source feeds the pipeline.
    cfg = schema.complete(dict(name="latents", data_dir=str(tmp_path / "a")), "data")
    b = next(create_dataset(cfg, seed=0, process_index=0, process_count=1, global_batch_size=4))
    assert b["image"].shape == (4, 4, 4, 4)


def test_encode_resumes_after_interrupt(tmp_path):
    full, _ = _encode(tmp_path / "full")
    with pytest.raises(Interrupt):
        _encode(tmp_path / "part", on_shard_done=_interrupt_after_first)
    files = sorted(os.listdir(tmp_path / "part"))
    assert files == ["latents-00000-of-00003.array_record"]  # no metadata, no tmp
    first = tmp_path / "part" / files[0]
    mtime = os.stat(first).st_mtime_ns
    (tmp_path / "part" / "latents-00001-of-00003.array_record.tmp-1").write_bytes(b"junk")
    done = []
    resumed, _ = _encode(tmp_path / "part", on_shard_done=done.append)
    assert done == [1, 2]  # shard 0 skipped
    assert os.stat(first).st_mtime_ns == mtime
    assert sorted(os.listdir(tmp_path / "part")) == sorted(os.listdir(tmp_path / "full"))
    assert resumed["count"] == full["count"] == 20
    a, b = LatentsSource(str(tmp_path / "full")), LatentsSource(str(tmp_path / "part"))
    for i in range(20):  # identical, in order, no duplicates
        np.testing.assert_array_equal(a[i]["latents"], b[i]["latents"])
        assert a[i]["label"] == b[i]["label"] == i % 16


def test_encode_two_processes_split_shards(tmp_path):
    m1, _ = _encode(tmp_path, process_index=1, process_count=2)
    assert m1 is None  # process 1 never writes metadata
    assert os.listdir(tmp_path) == ["latents-00001-of-00003.array_record"]
    m0, _ = _encode(tmp_path, process_index=0, process_count=2)
    assert m0 is not None and read_metadata(str(tmp_path))["count"] == 20


def test_encode_batch_not_divisible_by_devices(tmp_path):
    n = jax.local_device_count()
    if n == 1:
        pytest.skip("needs several local devices (conftest sets 8 CPU devices)")
    with pytest.raises(ValueError, match=f"batch_size={n + 1} is not divisible by the {n} local"):
        _encode(tmp_path, batch_size=n + 1)


def test_run_uses_config(tmp_path):
    config = base_config()
    config.data.update(name="synthetic_shapes", image_size=16, num_examples=12)
    config.encode.update(batch_size=8, shard_size=8, dtype="float16", store_flips=False)
    meta = encode_latents.run(config, str(tmp_path), encode_fn=fake_encode, params=PARAMS)
    assert meta["count"] == 12 and meta["variants"] == ["image"] and meta["dtype"] == "float16"
    assert os.path.exists(tmp_path / "latents" / "metadata.json")
    config.vae.path = None
    with pytest.raises(ValueError, match="vae.path is not set"):
        encode_latents.run(config, str(tmp_path / "x"))


def test_encode_with_a_tiny_flax_vae(tmp_path):
    """The real nag_jax.models.vae encoder runs under the device-sharded jit (tiny random
    config)."""
    from nag_jax.models import vae as vae_lib

    vae = vae_lib.AutoencoderKL(
        vae_lib.VAEConfig(block_out_channels=(8, 8), layers_per_block=1, norm_num_groups=4),
        chunk_size=0,
    )
    params = vae.init(jax.random.key(0), image_size=16)

    def encode_fn(p, images, key):
        return vae._encode(p, images, key, sample=False)  # posterior mean: comparable

    meta, src = _encode(tmp_path, encode_fn=encode_fn, params=params, store_flips=False)
    assert meta["latent_shape"] == [8, 8, 4]  # 2 levels -> downsample factor 2
    ref = src.render_batch(np.arange(20))
    mean, _ = vae.moments(params, jnp.asarray(ref["image"]))
    got = np.stack([LatentsSource(str(tmp_path))[i]["latents"][0] for i in range(20)])
    # Every example, in order, equals the unsharded encoding (float32 storage).
    np.testing.assert_allclose(got, np.asarray(mean) * 0.18215, rtol=1e-4, atol=1e-5)
