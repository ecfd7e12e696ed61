"""Sample-and-evaluate job: per-image determinism across devices, resume, ADM .npz, results."""

import glob
import json
import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nag_jax import parallel
from nag_jax.evaluation import evaluators, metrics, results, samples, store
from nag_jax.jobs import eval as eval_job
from nag_jax.sampling import build, generate
from tests.fixtures import tiny_config, tiny_model


def _config(**eval_overrides):
    c = tiny_config()
    c.mode = "eval"
    c.sample.num_steps = 3
    c.eval.update(
        num_images=20,
        batch_size=8,
        extractor="proxy",
        reference="dataset",
        reference_num_images=64,
        reference_seed=0,
        feature_batch_size=16,
        pr_k=3,
        pr_block_size=64,
        is_splits=4,
        train_num_images=16,
    )
    c.eval.update(eval_overrides)
    return c


@pytest.fixture(scope="module")
def model_and_params():
    return _make_model_and_params()


def _make_model_and_params():
    c = _config()
    model = tiny_model(c)
    x = jnp.zeros((1, 8, 8, 3))
    params = jax.jit(model.init)(jax.random.key(0), x, jnp.zeros((1,)), jnp.zeros((1,), jnp.int32))
    # adaLN-Zero makes a fresh model output exactly 0: perturb so images depend on the network
    leaves, tree = jax.tree.flatten(params["params"])
    keys = jax.random.split(jax.random.key(1), len(leaves))
    perturb = lambda ls, ks: [p + 0.2 * jax.random.normal(k, p.shape) for p, k in zip(ls, ks)]
    leaves = jax.jit(perturb)(leaves, list(keys))
    return model, jax.tree.unflatten(tree, leaves)


def _toy_extractor():
    def fn(x):
        x = x.astype(jnp.float32) / 255.0
        feats = [x.mean((1, 2)), x.std((1, 2)), x[:, ::4, ::4].reshape(x.shape[0], -1)]
        pool = jnp.concatenate(feats, axis=-1)
        return {"pool": pool, "logits": 3 * pool[:, :6]}

    return metrics.FeatureExtractor("toy-test", fn)


def test_images_depend_only_on_seed_and_index_not_devices_or_batch(model_and_params):
    model, params = model_and_params
    c = _config()
    mesh8 = parallel.create_mesh(c.parallel)
    mesh1 = parallel.create_mesh(c.parallel, devices=jax.devices()[:1])
    assert parallel.batch_shards(mesh8) == 8 and parallel.batch_shards(mesh1) == 1
    run8 = generate.make_batch_sampler(c, model, params, mesh8)
    run1 = generate.make_batch_sampler(c, model, params, mesh1)
    img8, y8 = run8(params, np.arange(8))
    subset = np.array([5, 2, 7])  # other batch composition, order and size, one device
    img1, y1 = run1(params, subset)
    assert img8.dtype == np.uint8 and img8.shape == (8, 8, 8, 3)
    assert len(np.unique(img8.reshape(8, -1), axis=0)) == 8  # distinct images
    np.testing.assert_array_equal(y1, y8[subset])
    np.testing.assert_array_equal(img1, img8[subset])
    # labels are a pure function of (seed, index); another seed changes images and labels
    c2 = _config()
    c2.seed = 1
    img_s1, y_s1 = generate.make_batch_sampler(c2, model, params, mesh1)(params, subset)
    assert not np.array_equal(img_s1, img1)


def test_killed_sampling_resumes_without_duplicates_or_gaps(tmp_path, model_and_params):
    model, params = model_and_params
    c = _config(num_images=20, batch_size=8)

    class Killed(Exception):
        pass

    def kill_after_first(done):
        raise Killed(done)

    with pytest.raises(Killed):
        samples.sample_images(
            c, str(tmp_path / "a"), model=model, params=params, on_chunk=kill_after_first
        )
    run_dir = glob.glob(str(tmp_path / "a" / "eval" / "*"))[0]
    assert len(glob.glob(os.path.join(run_dir, "chunks", "*.npz"))) == 1
    assert list(store.covered_indices(run_dir)) == list(range(8))
    # a write interrupted mid-way leaves only a tmp file, which is ignored
    with open(os.path.join(run_dir, "chunks", "00000008.tmp-999.npz"), "wb") as f:
        f.write(b"partial")
    path, run_dir2, _ = samples.sample_images(c, str(tmp_path / "a"), model=model, params=params)
    assert run_dir2 == run_dir
    chunks = [
        np.load(p)["indices"]
        for p in glob.glob(os.path.join(run_dir, "chunks", "*.npz"))
        if ".tmp" not in p
    ]
    all_idx = np.concatenate(chunks)
    assert len(all_idx) == 20 and sorted(all_idx) == list(range(20))  # no duplicates, no gaps
    # identical to an uninterrupted run with another batch size
    c16 = _config(num_images=20, batch_size=16)
    path_b, _, _ = samples.sample_images(c16, str(tmp_path / "b"), model=model, params=params)
    a, b = np.load(path), np.load(path_b)
    assert a["arr_0"].dtype == np.uint8 and a["arr_0"].shape == (20, 8, 8, 3)
    np.testing.assert_array_equal(a["arr_0"], b["arr_0"])
    np.testing.assert_array_equal(a["arr_1"], b["arr_1"])


def test_run_writes_adm_npz_metrics_and_results_rows(tmp_path, model_and_params):
    model, params = model_and_params
    c = _config(num_images=16, batch_size=8)
    ex = _toy_extractor()
    work = str(tmp_path / "w")
    row = eval_job.run(c, work, model=model, params=params, extractor=ex)
    # not the FID Inception: the numbers go to proxy_* columns, "fid" etc. stay empty
    for k in ("proxy_fd", "proxy_precision", "proxy_recall", "proxy_score", "proxy_kid"):
        assert np.isfinite(row[k]), k
    for k in ("fid", "sfid", "inception_score", "kid", "precision", "recall", "proxy_sfd"):
        assert row[k] is None, k  # (the toy extractor has no spatial features)
    assert row["is_fid_inception"] is False and row["extractor"] == "toy-test"
    with np.load(row["samples"]) as z:
        assert z["arr_0"].shape == (16, 8, 8, 3) and z["arr_0"].dtype == np.uint8
    # the reference statistics of the dataset were cached
    assert len(glob.glob(os.path.join(work, "reference_cache", "ref-toy-test-*.npz"))) == 1
    # a second evaluation reuses the samples and appends a row with the same key
    row2 = eval_job.run(c, work, model=model, params=params, extractor=ex)
    assert row2["key"] == row["key"] and row2["proxy_fd"] == pytest.approx(row["proxy_fd"])
    lines = results.read_results(os.path.join(work, "eval_results.jsonl"))
    assert len(lines) == 2 and lines[0]["key"] == row["key"]
    assert json.loads(json.dumps(lines[0]["sampling_config"]))["seed"] == 0
    with open(os.path.join(work, "eval_results.csv")) as f:
        assert len(f.read().strip().splitlines()) == 3  # header + 2 rows
    # another guidance setting -> another key and another sample directory
    c.sample.nag_scale = 1.0
    row3 = eval_job.run(c, work, model=model, params=params, extractor=ex)
    assert row3["key"] != row["key"] and row3["samples"] != row["samples"]
    # other weights under the same config (e.g. a later checkpoint) never reuse samples
    c.sample.nag_scale = 0.0
    params2 = jax.tree.map(lambda p: p * 1.01, params)
    row4 = eval_job.run(c, work, model=model, params=params2, extractor=ex)
    assert row4["samples"] != row["samples"] and row4["key"] != row["key"]


def test_fid_evaluator_for_training_is_deterministic(tmp_path, model_and_params):
    model, params = model_and_params
    c = _config()
    evaluate = evaluators.make_fid_evaluator(
        c, model, str(tmp_path), num_images=12, extractor=_toy_extractor()
    )
    a = evaluate(params)
    assert set(a) == {
        "eval/proxy_fd",
        "eval/proxy_score",
        "eval/proxy_kid",
        "eval/proxy_kid_se",
        "eval/proxy_precision",
        "eval/proxy_recall",
    }
    b = evaluate(params)
    assert a == b


def test_errors_name_the_fix(tmp_path):
    c = _config(extractor="nope")
    with pytest.raises(ValueError, match="expected 'inception'"):
        evaluators.build_extractor(c)
    c = _config(extractor="inception", inception_path=str(tmp_path / "missing.npz"))
    with pytest.raises(FileNotFoundError, match="pt_inception-2015-12-05"):
        evaluators.build_extractor(c)
    c = _config()
    with pytest.raises(ValueError, match="config.model.weights"):
        samples.load_sampling_params(c)
    c.model.in_channels = 4
    with pytest.raises(ValueError, match="config.vae.path"):
        build.build_decoder(c)


def test_adm_npz_is_streamed_from_interleaved_chunks_and_read_back_in_batches(tmp_path):
    from nag_jax.evaluation import reference_stats

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(30, 4, 4, 3), dtype=np.uint8)
    labels = np.arange(30) % 7
    run_dir = str(tmp_path)
    # chunks as left by resumed runs: interleaved index sets, one duplicate index
    for idx in (np.arange(0, 8), np.array([8, 9, 20, 21]), np.arange(10, 20), np.arange(21, 30)):
        store.write_chunk(run_dir, idx, images[idx], labels[idx])
    out = str(tmp_path / "samples.npz")
    store.chunks_to_adm_npz(run_dir, 30, out, block=7)
    with np.load(out) as z:  # a standard .npz: ADM's evaluator and np.load read it
        np.testing.assert_array_equal(z["arr_0"], images)
        np.testing.assert_array_equal(z["arr_1"], labels)
    got = np.concatenate(list(reference_stats.iter_npz_batches(out, 8)))
    np.testing.assert_array_equal(got, images)
    assert reference_stats.npz_array_shape(out) == ((30, 4, 4, 3), np.dtype(np.uint8))
    with pytest.raises(RuntimeError, match="missing"):
        store.chunks_to_adm_npz(run_dir, 31, str(tmp_path / "x.npz"))


def test_run_scores_an_existing_adm_npz(tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "release_samples.npz"
    np.savez(path, arr_0=rng.integers(0, 256, size=(24, 8, 8, 3), dtype=np.uint8))
    c = _config(samples=str(path))
    row = eval_job.run(c, str(tmp_path / "w"), extractor=_toy_extractor())
    assert row["num_images"] == 24 and row["samples"] == str(path)
    assert np.isfinite(row["proxy_fd"]) and row["proxy_fd"] > 0 and row["fid"] is None


_CHILD = """
import os, sys, time
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, {root!r})
import jax
jax.config.update("jax_default_matmul_precision", "highest")
from tests.test_eval_job import _config, _make_model_and_params
from nag_jax.evaluation import samples
model, params = _make_model_and_params()
def hang(done):
    print("CHUNK", done, flush=True)
    time.sleep(600)
samples.sample_images(_config(num_images=24, batch_size=8), {work!r}, model=model,
                      params=params, on_chunk=hang)
"""


@pytest.mark.slow
def test_sigkilled_sampling_process_resumes(tmp_path, model_and_params):
    """A real `kill -9` of a sampling process after its first chunk; the rerun completes the set
    with every index exactly once."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    work = str(tmp_path / "w")
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD.format(root=root, work=work)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        line = child.stdout.readline()
        assert line.startswith("CHUNK"), line
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    run_dir = glob.glob(os.path.join(work, "eval", "*"))[0]
    assert list(store.covered_indices(run_dir)) == list(range(8))
    model, params = model_and_params
    path, run_dir2, _ = samples.sample_images(
        _config(num_images=24, batch_size=8), work, model=model, params=params
    )
    assert run_dir2 == run_dir  # same weights fingerprint, same sampling key
    idx = np.concatenate(
        [np.load(p)["indices"] for p in glob.glob(os.path.join(run_dir, "chunks", "*.npz"))]
    )
    assert sorted(idx) == list(range(24))
    with np.load(path) as z:
        assert z["arr_0"].shape == (24, 8, 8, 3)
