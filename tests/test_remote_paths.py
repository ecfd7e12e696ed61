"""User paths on a filesystem that is not the local disk (issue 12 item 3).

``gs://`` paths go through etils.epath's fsspec backend exactly as on a pod; the ``gcs`` fsspec
protocol is served here by fsspec's in-memory filesystem (offline, nothing touches the local
disk), so any code that still uses os.path / open / np.load on a user path fails these tests.
"""

from __future__ import annotations

import io
import json
import sys

import numpy as np
import pytest
from etils import epath


@pytest.fixture
def gcs(monkeypatch):
    """An empty in-memory ``gs://bucket`` served through epath's fsspec backend."""
    from etils.epath import backend, gpath
    from fsspec.implementations.memory import MemoryFileSystem

    class FakeGCS(MemoryFileSystem):
        protocol = ("gs", "gcs")
        root_marker = ""
        store: dict = {}
        pseudo_dirs = [""]

        @classmethod
        def _strip_protocol(cls, path):
            path = str(path)
            for prefix in ("gs://", "gcs://"):
                if path.startswith(prefix):
                    path = path[len(prefix) :]
            return path.rstrip("/")

    registry = sys.modules["fsspec.registry"]._registry
    monkeypatch.setitem(registry, "gcs", FakeGCS)
    monkeypatch.setitem(registry, "gs", FakeGCS)
    monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)  # epath: fsspec for gs://
    backend.fsspec_backend._get_filesystem.cache_clear()
    FakeGCS.clear_instance_cache()
    yield epath.Path("gs://bucket")
    FakeGCS.store.clear()
    backend.fsspec_backend._get_filesystem.cache_clear()


def test_fake_bucket_is_not_the_local_disk(gcs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (gcs / "run").mkdir(parents=True)
    (gcs / "run" / "x.txt").write_text("hi")
    assert (gcs / "run" / "x.txt").read_text() == "hi"
    assert list(tmp_path.iterdir()) == []  # not './gs:/bucket/...'
    assert str(gcs / "run") == "gs://bucket/run"


def test_results_file_on_a_bucket_with_a_torn_line(gcs):
    from nag_jax.evaluation import results

    path = str(gcs / "run" / "eval_results.jsonl")
    results.append_result(path, {"key": "a", "fid": 1.0})
    with epath.Path(path).open("a") as f:
        f.write('{"key": "b", "fi')
    results.append_result(path, {"key": "c", "fid": 2.0})
    assert [r["key"] for r in results.read_results(path)] == ["a", "c"]
    lines = (gcs / "run" / "eval_results.csv").read_text().splitlines()
    assert [ln.split(",")[0] for ln in lines] == ["key", "a", "c"]


def test_eval_chunks_and_adm_file_on_a_bucket(gcs):
    from nag_jax.evaluation import reference_stats, store

    run_dir = str(gcs / "run" / "eval" / "abc")
    images = np.arange(6 * 2 * 2 * 3, dtype=np.uint8).reshape(6, 2, 2, 3)
    labels = np.array([3, 1, 4, 1, 5, 9])
    for lo in (0, 3):
        idx = np.arange(lo, lo + 3)
        store.write_chunk(run_dir, idx, images[idx], labels[idx])
    assert store.covered_indices(run_dir).tolist() == list(range(6))
    out = str(gcs / "run" / "samples_6.npz")
    store.chunks_to_adm_npz(run_dir, 6, out, block=4)
    assert reference_stats.npz_array_shape(out) == ((6, 2, 2, 3), np.dtype(np.uint8))
    got = np.concatenate(list(reference_stats.iter_npz_batches(out, 4)))
    np.testing.assert_array_equal(got, images)
    with epath.Path(out).open("rb") as f, np.load(f) as z:
        np.testing.assert_array_equal(z["arr_1"], labels)
    # a damaged chunk on the bucket is moved aside there and counted missing
    chunk = gcs / "run" / "eval" / "abc" / "chunks" / "00000003-00000005.npz"
    chunk.write_bytes(chunk.read_bytes()[:40])
    assert store.missing_indices(run_dir, 6).tolist() == [3, 4, 5]
    assert (chunk.parent / "00000003-00000005.npz.corrupt").exists()


def test_reference_stats_cache_on_a_bucket(gcs):
    from nag_jax.evaluation import reference_stats

    rng = np.random.default_rng(0)
    stats = reference_stats.ReferenceStats(
        rng.normal(size=3), np.eye(3), None, None, rng.normal(size=(5, 3)), {"n": 5}
    )
    path = str(gcs / "cache" / "ref-x.npz")
    stats.save(path)
    back = reference_stats.ReferenceStats.load(path)
    np.testing.assert_array_equal(back.mu, stats.mu)
    np.testing.assert_array_equal(back.pool_features, stats.pool_features)
    assert back.meta == {"n": 5}
    ident = reference_stats.file_identity(path)
    assert ident["source"] == path and ident["size"] == len(epath.Path(path).read_bytes())


def test_latents_metadata_on_a_bucket(gcs):
    from nag_jax.data import latents

    d = gcs / "latents"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        latents.read_metadata(str(d))
    d.mkdir()
    (d / latents.shard_filename(0, 1)).write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"1 shard file\(s\) present"):
        latents.read_metadata(str(d))
    meta = {"format": latents.FORMAT, "count": 7, "latent_shape": [4, 4, 4], "shards": []}
    (d / latents.METADATA_FILE).write_text(json.dumps(meta))
    assert latents.read_metadata(str(d)) == meta
    with pytest.raises(ValueError, match="array_record reads local files only"):
        latents.LatentsSource(str(d))


def test_latent_shard_written_to_a_bucket(gcs, tmp_path):
    from nag_jax.data import latents

    labels = np.array([2, 7])
    lat = np.arange(2 * 1 * 2 * 2 * 4, dtype=np.float32).reshape(2, 1, 2, 2, 4)
    dst = gcs / "latents" / latents.shard_filename(0, 1)
    dst.parent.mkdir()
    latents.write_shard(str(dst), labels, lat, dtype="float32")
    assert [p.name for p in dst.parent.iterdir()] == [dst.name]  # no tmp left
    local = tmp_path / dst.name
    local.write_bytes(dst.read_bytes())
    from array_record.python.array_record_module import ArrayRecordReader

    reader = ArrayRecordReader(str(local))
    records = reader.read_all()
    reader.close()
    for rec, y, z in zip(records, labels, lat):
        label, back = latents.decode_record(rec, (2, 2, 4), 1, "float32")
        assert label == y
        np.testing.assert_array_equal(back, z)


def test_image_folder_on_a_bucket(gcs):
    from PIL import Image

    from nag_jax.data.sources import BadImageError, ImageFolderSource

    rng = np.random.default_rng(0)
    pixels = {}
    for cls, names in (("cat", ["1.png", "sub/2.png"]), ("dog", ["3.png"])):
        for name in names:
            arr = rng.integers(0, 255, (5, 6, 3), dtype=np.uint8)
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, format="PNG")
            path = gcs / "img" / cls / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(buf.getvalue())
            pixels[str(path)] = arr
    (gcs / "img" / "dog" / "4.png").write_bytes(b"garbage")
    src = ImageFolderSource("gs://bucket/img")
    assert src.class_names == ["cat", "dog"]
    assert src.files == [
        "gs://bucket/img/cat/1.png",
        "gs://bucket/img/cat/sub/2.png",
        "gs://bucket/img/dog/3.png",
        "gs://bucket/img/dog/4.png",
    ]
    assert src.labels.tolist() == [0, 0, 1, 1]
    for i in range(3):
        np.testing.assert_array_equal(src[i]["image"], pixels[src.files[i]])
    with pytest.raises(BadImageError, match="gs://bucket/img/dog/4.png"):
        src[3]


def test_vae_from_a_bucket(gcs):
    import jax
    from safetensors.numpy import save

    from nag_jax.models import vae as vae_lib

    cfg = {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * 2,
        "up_block_types": ["UpDecoderBlock2D"] * 2,
        "block_out_channels": [8, 16],
        "layers_per_block": 1,
        "norm_num_groups": 4,
        "latent_channels": 4,
        "act_fn": "silu",
    }
    vae = vae_lib.AutoencoderKL(vae_lib.VAEConfig.from_dict(cfg))
    params = vae.init(jax.random.key(0), image_size=8)
    folder = gcs / "sd-pipeline" / "vae"  # a diffusers pipeline folder: the VAE in vae/
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(cfg))
    state = vae_lib.state_dict_from_params(params)
    (folder / "diffusion_pytorch_model.safetensors").write_bytes(save(state))
    assert vae_lib.find_vae_dir("gs://bucket/sd-pipeline") == "gs://bucket/sd-pipeline/vae"
    loaded, got = vae_lib.load_vae("gs://bucket/sd-pipeline")
    assert loaded.config.block_out_channels == (8, 16)
    flat_want = jax.tree_util.tree_leaves_with_path(params)
    flat_got = dict(jax.tree_util.tree_leaves_with_path(got))
    for path, leaf in flat_want:
        np.testing.assert_array_equal(np.asarray(flat_got[path]), np.asarray(leaf))
    with pytest.raises(FileNotFoundError, match="gs://bucket/nope"):
        vae_lib.find_vae_dir("gs://bucket/nope")


def test_weights_and_workdir_paths_keep_their_scheme(gcs):
    from nag_jax.evaluation import samples
    from nag_jax.storage import weights
    from tests.fixtures import tiny_config

    c = tiny_config()
    c.model.weights = "gs://bucket/ckpt/sit"
    assert samples.weights_path(c) == "gs://bucket/ckpt/sit"
    assert samples.sampling_identity(c)["weights"] == "gs://bucket/ckpt/sit"
    with pytest.raises(FileNotFoundError, match="Checkpoint gs://bucket/ckpt/sit does not exist"):
        weights.load_params("gs://bucket/ckpt/sit")


def test_figures_and_reports_of_the_pod_modes_on_a_bucket(gcs, tmp_path, monkeypatch):
    """sweep / noise_shift write their figures (reporting.figures), tables and reports to a
    gs:// workdir, and nothing lands on the local disk."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    from nag_jax.reporting.figures import save_figure
    from nag_jax.reporting.tables import shift_report
    from nag_jax.storage.paths import as_path

    monkeypatch.chdir(tmp_path)
    fig, ax = plt.subplots(figsize=(2, 1))
    ax.plot([0, 1], [1, 0])
    save_figure(fig, "gs://bucket/run/sweep/curves.png")  # creates the folder
    plt.close(fig)
    with (gcs / "run" / "sweep" / "curves.png").open("rb") as f:
        assert Image.open(f).size == (220, 110)  # 2 x 1 inches at dpi 110
    results = dict(model="SiT-S/2", sampler="sde euler 4 steps", estimator={}, late=0.25,
                   rows={"none": dict(late=0.01, all=0.02, abs_all=0.03)}, num_images=8,
                   elapsed_s=1.0, devices="1 x cpu")  # fmt: skip
    text = shift_report(results, ["noise_shift_kde.png"])
    (as_path("gs://bucket/run") / "report.md").write_text(text)  # as mode=noise_shift does
    assert (gcs / "run" / "report.md").read_text() == text
    assert "| none | +0.0100 | +0.0200 | 0.0300 |" in text
    assert list(tmp_path.iterdir()) == []


def test_training_sample_grids_and_latents_land_in_the_bucket(gcs, tmp_path, monkeypatch):
    """training.loop.write_grid on a gs:// workdir: the PNG grid and the raw-latents .npy go to
    the bucket through storage.paths (the bug: os.makedirs made a local ./gs:/ folder)."""
    from PIL import Image

    from nag_jax.training.loop import write_grid

    class Writer:
        images = {}

        def write_images(self, step, images):
            self.images[step] = images

    monkeypatch.chdir(tmp_path)
    rgb = np.linspace(-1, 1, 4 * 8 * 8 * 3, dtype=np.float32).reshape(4, 8, 8, 3)
    png = write_grid("gs://bucket/run", Writer(), 7, rgb)
    assert png == "gs://bucket/run/samples/step_00000007.png"
    with (gcs / "run" / "samples" / "step_00000007.png").open("rb") as f:
        assert Image.open(f).size == (2 + 2 * (8 + 2), 2 + 2 * (8 + 2))  # 2 x 2 grid, 2px pads
    latents = rgb[..., :2].copy()  # not 3 channels, no decoder: saved raw
    npy = write_grid("gs://bucket/run", Writer(), 8, latents)
    assert npy == "gs://bucket/run/samples/step_00000008_latents.npy"
    with (gcs / "run" / "samples" / "step_00000008_latents.npy").open("rb") as f:
        np.testing.assert_array_equal(np.load(f), latents)
    assert list(tmp_path.iterdir()) == []  # nothing on the local disk


@pytest.mark.parametrize("where", ["local", "bucket"])
def test_atomic_write_keeps_the_old_file_when_the_write_fails(gcs, tmp_path, where):
    from nag_jax.storage.paths import as_path, atomic_write

    path = str(tmp_path / "d" / "x.bin") if where == "local" else "gs://bucket/d/x.bin"
    assert atomic_write(path, lambda f: f.write(b"old")) == path  # creates the folder

    def fail(f):
        f.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, fail)
    assert as_path(path).read_bytes() == b"old"
    assert [p.name for p in as_path(path).parent.iterdir()] == ["x.bin"]  # no temporary left
