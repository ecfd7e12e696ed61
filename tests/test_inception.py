"""FID Inception in Flax vs an independent plain-PyTorch reference; converter checks."""

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import traverse_util

from nag_jax.convert import inception as conv
from nag_jax.evaluation import inception
from tests.inception_torch_reference import FIDInceptionV3, randomize_


@pytest.fixture(scope="module")
def torch_model():
    torch.manual_seed(0)
    return randomize_(FIDInceptionV3(), seed=0)


@pytest.fixture(scope="module")
def flax_params(torch_model):
    sd = {k: v.numpy() for k, v in torch_model.state_dict().items()}
    flat = inception.params_from_state_dict(sd)
    inception.check_flat_params(flat)
    return traverse_util.unflatten_dict(flat, sep="/")


def _rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.max(np.abs(a - b)) / (np.max(np.abs(b)) + 1e-12)


def test_network_matches_torch_reference_on_75px(torch_model, flax_params):
    """The smallest input the architecture admits (75x75) exercises every layer; pool, spatial
    (Mixed_6d.branch1x1[:7], NHWC flattened) and bias-free logits agree to float32 tolerance."""
    rng = np.random.default_rng(0)
    x01 = rng.uniform(size=(2, 75, 75, 3)).astype(np.float32)
    with torch.no_grad():
        tp, ts, tl = torch_model(torch.from_numpy(x01).permute(0, 3, 1, 2), resize=False)
    out = jax.jit(lambda p, x: inception.InceptionV3().apply({"params": p}, x))(
        flax_params, jnp.asarray(2 * x01 - 1)
    )
    assert out["pool"].shape == (2, 2048) and out["logits"].shape == (2, 1008)
    assert out["spatial"].shape == (2, 3 * 3 * 7)
    assert np.std(tp.numpy()) > 1e-3  # the random net does not collapse to zeros
    for name, ref in (("pool", tp), ("spatial", ts), ("logits", tl)):
        assert _rel_err(out[name], ref.numpy()) < 2e-5, name
    # with the bias the logits are torchvision's fc output
    fc = inception.Linear(1008, add_bias=True)
    out_b = fc.apply({"params": flax_params["fc"]}, out["pool"])
    with torch.no_grad():
        ref_b = torch_model.fc(tp).numpy()
    assert _rel_err(out_b, ref_b) < 2e-5


@pytest.mark.parametrize("size", [(16, 16), (32, 48), (400, 333)])
def test_preprocess_matches_pytorch_fid_resize(size):
    """uint8 -> /255 -> F.interpolate(299, bilinear, align_corners=False) -> 2x - 1, both for
    upsampling and for downsampling (no antialiasing)."""
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, size=(2, *size, 3), dtype=np.uint8)
    ours = np.asarray(inception.preprocess(img))
    t = torch.from_numpy(img).permute(0, 3, 1, 2).float() / 255.0
    ref = 2 * F.interpolate(t, size=(299, 299), mode="bilinear", align_corners=False) - 1
    # positions and weights in float32 as torch computes them; sums rounded differently
    np.testing.assert_allclose(ours, ref.permute(0, 2, 3, 1).numpy(), atol=1e-5)


def _tf1_resize_reference(img, out):
    """Independent TF1 resize_bilinear(align_corners=False) on float (H, W, C): per-pixel loops
    of the legacy kernel (src = dst * in / out; no half-pixel centres; edge clamp)."""
    h, w, _ = img.shape
    sy, sx = np.float32(h / out), np.float32(w / out)
    res = np.zeros((out, out, img.shape[2]), np.float64)
    for oy in range(out):
        y = np.float32(oy) * sy
        y0 = int(np.floor(y))
        y1, dy = min(y0 + 1, h - 1), float(y - y0)
        for ox in range(out):
            x = np.float32(ox) * sx
            x0 = int(np.floor(x))
            x1, dx = min(x0 + 1, w - 1), float(x - x0)
            top = img[y0, x0] + (img[y0, x1] - img[y0, x0]) * dx
            bot = img[y1, x0] + (img[y1, x1] - img[y1, x0]) * dx
            res[oy, ox] = top + (bot - top) * dy
    return res


@pytest.mark.parametrize("size", [13, 400])
def test_adm_tf_preprocess_matches_tf1_resize_and_scaling(size):
    """ "adm_tf": TF1 legacy bilinear on 0..255 floats, then (x - 128) / 128 (ADM's graph)."""
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, size=(1, size, size, 3), dtype=np.uint8)
    ours = np.asarray(inception.preprocess(img, mode="adm_tf"))[0]
    ref = (_tf1_resize_reference(img[0].astype(np.float64), 299) - 128.0) / 128.0
    np.testing.assert_allclose(ours, ref, atol=2e-5)
    # differs from the pytorch-fid preprocessing by more than rounding
    assert np.max(np.abs(ours - np.asarray(inception.preprocess(img))[0])) > 0.05
    with pytest.raises(ValueError, match="mode"):
        inception.preprocess(img, mode="tf2")


def test_preprocess_identity_at_299_and_rejects_floats():
    img = np.arange(299 * 299 * 3, dtype=np.int64).reshape(1, 299, 299, 3) % 256
    out = inception.preprocess(img.astype(np.uint8))
    np.testing.assert_allclose(np.asarray(out), img / 127.5 - 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="to_uint8"):
        inception.preprocess(np.zeros((1, 8, 8, 3), np.float32))


def test_spatial_features_have_adm_size_at_299():
    dims = inception.feature_dims()
    assert dims == {"pool": 2048, "spatial": 17 * 17 * 7, "logits": 1008}


@pytest.mark.slow
def test_end_to_end_uint8_matches_torch_reference_at_299(torch_model, flax_params):
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, size=(2, 32, 32, 3), dtype=np.uint8)
    t0 = time.time()
    out = jax.jit(inception.inception_apply_fn(flax_params))(img)
    jax.block_until_ready(out)
    with torch.no_grad():
        tp, ts, tl = torch_model(torch.from_numpy(img).permute(0, 3, 1, 2).float() / 255.0)
    for name, ref in (("pool", tp), ("spatial", ts), ("logits", tl)):
        assert _rel_err(out[name], ref.numpy()) < 5e-5, name
    print(f"flax 299px forward+compile: {time.time() - t0:.1f}s")


def test_converter_roundtrip_and_loader(tmp_path, torch_model, flax_params):
    src = tmp_path / "pt_inception.pth"
    torch.save(torch_model.state_dict(), src)  # includes num_batches_tracked, which is dropped
    dst = tmp_path / "inception.npz"
    conv.convert(str(src), str(dst))
    loaded = inception.load_inception_params(str(dst))
    a = traverse_util.flatten_dict(loaded, sep="/")
    b = traverse_util.flatten_dict(flax_params, sep="/")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    # the conv kernel layout is HWIO: torch (O, I, kh, kw) -> (kh, kw, I, O)
    w = torch_model.Mixed_6b.branch7x7_2.conv.weight.detach().numpy()  # (128, 128, 1, 7)
    np.testing.assert_array_equal(a["Mixed_6b/branch7x7_2/conv/kernel"], w.transpose(2, 3, 1, 0))


def test_params_directory_output_and_legacy_orbax_tree_load(tmp_path, torch_model, flax_params):
    """A non-.npz --dst is a params directory in the one layout (nag_jax.storage.weights); the
    {"params": tree} Orbax directories of earlier versions still load."""
    import orbax.checkpoint as ocp

    src = tmp_path / "pt_inception.pth"
    torch.save(torch_model.state_dict(), src)
    conv.convert(str(src), str(tmp_path / "fid_dir"))
    legacy = str(tmp_path / "legacy")
    ocp.PyTreeCheckpointer().save(legacy, {"params": flax_params})
    want = traverse_util.flatten_dict(flax_params, sep="/")
    for path in (tmp_path / "fid_dir", legacy, src):  # the .pth itself is read directly too
        got = traverse_util.flatten_dict(inception.load_inception_params(str(path)), sep="/")
        assert got.keys() == want.keys()
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=f"{path}: {k}")


def test_converter_rejects_wrong_files(tmp_path, torch_model):
    # a DiT-like checkpoint
    dit = tmp_path / "dit.pt"
    torch.save({"x_embedder.proj.weight": torch.zeros(8, 4, 2, 2)}, dit)
    with pytest.raises(ValueError, match="missing keys"):
        conv.convert(str(dit), str(tmp_path / "o.npz"))
    # torchvision's ImageNet Inception: 1000 classes + AuxLogits
    sd = dict(torch_model.state_dict())
    sd["fc.weight"] = torch.zeros(1000, 2048)
    sd["fc.bias"] = torch.zeros(1000)
    sd["AuxLogits.fc.weight"] = torch.zeros(1000, 768)
    tv = tmp_path / "tv.pth"
    torch.save(sd, tv)
    with pytest.raises(ValueError, match=r"wrong shapes.*fc/kernel"):
        conv.convert(str(tv), str(tmp_path / "o.npz"))
    # not a state dict at all
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="pt_inception-2015-12-05"):
        conv.convert(str(junk), str(tmp_path / "o.npz"))
    assert not (tmp_path / "o.npz").exists()


def test_missing_weights_error_says_where_to_get_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="pt_inception-2015-12-05-6726825d.pth") as e:
        inception.load_inception_params(str(tmp_path / "nope.npz"))
    assert "github.com/mseitzer/pytorch-fid/releases" in str(e.value)
    assert "python -m nag_jax.convert inception" in str(e.value)
