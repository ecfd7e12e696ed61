"""Sample-quality metrics from features: FID, sFID, Inception Score, KID, improved precision/recall.

Conventions follow ADM's evaluator (openai/guided-diffusion evaluations/evaluator.py), the suite
behind the DiT/SiT numbers:
  * FID / sFID: Frechet distance between Gaussians fitted to "pool" (2048-d) / "spatial"
    (2023-d) features; mean and covariance (np.cov, ddof=1) accumulated in float64; matrix square
    root with scipy.linalg.sqrtm in float64; if the product is singular, 1e-6 is added to both
    diagonals; a small imaginary part (diagonal |imag| <= 1e-3) is dropped, a larger one raises.
  * Inception Score: softmax of the "logits" (ADM: pool @ W without bias, see inception.py),
    split into `num_splits` = 10 consecutive parts (ADM: parts of 5000 images = 10 parts for 50k),
    IS = mean over parts of exp(mean_i KL(p(y|x_i) || p(y))). Computed in float64 from
    log-softmax (ADM takes log of the softmax in float32; identical up to rounding).
  * KID (Binkowski et al. 2018; clean-fid, torch-fidelity): unbiased MMD^2 with the cubic
    polynomial kernel (x.y / d + 1)^3 on "pool", mean and SE over 100 subsets of
    min(1000, N) images (`kid`). Unbiased at any N, unlike FID.
  * Precision / recall (Kynkaanniemi et al. 2019, ADM's ManifoldEstimator): radius of each point =
    SQUARED distance to its k-th nearest neighbour (k = 3) within its own set, the point itself
    counted as the 0-th neighbour; a sample is "in" the reference manifold when its squared
    distance to some reference point is <= that point's radius. precision = fraction of samples in
    the reference manifold, recall = fraction of references in the sample manifold. Pairwise
    distances max(|u|^2 - 2 u.v + |v|^2, 0) are computed on device in float32 blocks (ADM tries
    float16 first and falls back to float32; float32 throughout differs only at ties).

Features come from a `FeatureExtractor` (the FID Inception, or a pluggable proxy such as the
demo's small classifier): any jit-able fn(uint8 (B, H, W, C)) -> dict of (B, D) arrays with the
keys "pool" (required), "spatial" and "logits" (optional: sFID / IS are skipped without them).
Only numbers from the real FID Inception weights (`FeatureExtractor.is_fid_inception`) are
comparable with published FIDs; proxy or random-weight numbers are relative measures only.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from scipy import linalg

FEATURE_KEYS = ("pool", "spatial", "logits")


@dataclasses.dataclass(frozen=True)
class FeatureExtractor:
    """A named feature function.

    name: identifies weights + preprocessing; part of every cache key and results row.
    fn: jit-able fn(images uint8 (B, H, W, C)) -> {"pool": (B, D), ["spatial": (B, S)],
        ["logits": (B, K)]}, float32; or fn(params, images) when `params` is given (large
        weights are then jit ARGUMENTS, not constants baked into the compiled program).
    params: optional pytree passed to fn (replicated on the devices).
    is_fid_inception: True only for the real pytorch-fid Inception weights; everything else
        (proxy classifier, random weights) is a relative measure and is labelled so in results.
    """

    name: str
    fn: Callable
    is_fid_inception: bool = False
    description: str = ""
    params: Any = None


class RunningStats:
    """Mean and covariance of feature batches, accumulated in float64 (sum and sum of outer
    products, so batches of any size can be streamed)."""

    def __init__(self, dim: int | None = None):
        self.n = 0
        self._s1 = None if dim is None else np.zeros(dim, np.float64)
        self._s2 = None if dim is None else np.zeros((dim, dim), np.float64)

    def update(self, feats) -> RunningStats:
        f = np.asarray(feats, np.float64).reshape(len(feats), -1)
        if self._s1 is None:
            self._s1 = np.zeros(f.shape[1], np.float64)
            self._s2 = np.zeros((f.shape[1], f.shape[1]), np.float64)
        self.n += f.shape[0]
        self._s1 += f.sum(axis=0)
        self._s2 += f.T @ f
        return self

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        """(mu (D,), sigma (D, D)) with the unbiased (n - 1) covariance, as np.cov."""
        if self.n < 2:
            raise ValueError(f"need at least 2 feature vectors for a covariance, got {self.n}")
        mu = self._s1 / self.n
        sigma = (self._s2 - self.n * np.outer(mu, mu)) / (self.n - 1)
        return mu, (sigma + sigma.T) / 2


def mean_cov(feats) -> tuple[np.ndarray, np.ndarray]:
    return RunningStats().update(feats).mean_cov()


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 sqrtm(S1 S2)) in float64 (ADM / TTUR recipe)."""
    mu1, mu2 = np.atleast_1d(np.float64(mu1)), np.atleast_1d(np.float64(mu2))
    s1, s2 = np.atleast_2d(np.float64(sigma1)), np.atleast_2d(np.float64(sigma2))
    if mu1.shape != mu2.shape or s1.shape != s2.shape:
        raise ValueError(
            f"statistics of different feature sizes: mu {mu1.shape} vs {mu2.shape}, sigma "
            f"{s1.shape} vs {s2.shape}; were they computed with the same feature extractor?"
        )
    diff = mu1 - mu2
    covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        warnings.warn(
            f"FID: singular product of covariances; adding {eps} to the diagonals", stacklevel=2
        )
        offset = np.eye(s1.shape[0]) * eps
        covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"FID: imaginary component {np.max(np.abs(covmean.imag))} in sqrtm")
        covmean = covmean.real
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def fid_from_features(feats1, feats2) -> float:
    return frechet_distance(*mean_cov(feats1), *mean_cov(feats2))


@dataclasses.dataclass(frozen=True)
class FrechetReference:
    """A fixed reference Gaussian N(mu, sigma) prepared for many Fréchet distances to it.

    sigma is kept as a factor F (R, D) with sigma = F^T F: the centred features / sqrt(N - 1)
    when the reference has N <= D vectors (R = N), else sigma's symmetric square root (R = D).
    Then tr sqrtm(sigma_ref sigma) = sum of the singular values of F_ref G^T for any factor G of
    sigma (the nonzero eigenvalues of sigma_ref sigma are those of (F_ref G^T)(F_ref G^T)^T),
    i.e. sum_i sqrt(l_i) over the eigenvalues l_i of the smaller Gram matrix of F_ref G^T. So
    each distance is one symmetric eigenvalue problem (``np.linalg.eigvalsh``, float64) of size
    min(R, N_samples) (`distance_to_features`) or R (`distance`), instead of scipy's general
    ``sqrtm`` of size D (`frechet_distance`): at D = 2048 seconds instead of a minute on a CPU,
    and real by construction, so singular covariances (fewer vectors than dimensions) need no
    offset. Same quantity as `frechet_distance` (equal to float64 rounding when the covariances
    are full rank); eigenvalues below n * eps * the largest (rounding level) count as 0.
    """

    mu: np.ndarray  # (D,)
    factor: np.ndarray  # (R, D), sigma = factor^T factor
    trace_sigma: float

    @classmethod
    def from_stats(cls, mu, sigma) -> FrechetReference:
        """From the mean (D,) and covariance (D, D) (factor: the symmetric square root)."""
        sigma = np.atleast_2d(np.float64(sigma))
        w, v = np.linalg.eigh((sigma + sigma.T) / 2)
        root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
        return cls(np.atleast_1d(np.float64(mu)), root, float(np.trace(sigma)))

    @classmethod
    def from_features(cls, feats) -> FrechetReference:
        """From (N, D) features: mean and unbiased covariance, as `mean_cov`."""
        f = np.asarray(feats, np.float64).reshape(len(feats), -1)
        if len(f) < 2:
            raise ValueError(f"need at least 2 feature vectors for a covariance, got {len(f)}")
        if len(f) > f.shape[1]:
            return cls.from_stats(*mean_cov(f))
        mu = f.mean(axis=0)
        factor = (f - mu) / np.sqrt(len(f) - 1)
        return cls(mu, factor, float(np.sum(factor * factor)))

    def _check(self, mu, dim) -> np.ndarray:
        mu = np.atleast_1d(np.float64(mu))
        if mu.shape != self.mu.shape or dim != self.factor.shape[1]:
            raise ValueError(
                f"statistics of different feature sizes: {dim} vs {self.factor.shape[1]} "
                "dimensions; were they computed with the same feature extractor?"
            )
        return mu

    def _distance(self, mu, trace_sigma, gram) -> float:
        lam = np.linalg.eigvalsh((gram + gram.T) / 2)
        # eigenvalues at rounding level (a singular covariance's null space) are 0: their square
        # roots would add sqrt(eps)-sized noise
        lam = np.where(lam > len(lam) * np.finfo(np.float64).eps * max(lam.max(), 0.0), lam, 0.0)
        tr_covmean = float(np.sum(np.sqrt(lam)))
        diff = mu - self.mu
        return float(diff @ diff + trace_sigma + self.trace_sigma - 2 * tr_covmean)

    def distance(self, mu, sigma) -> float:
        """||mu - mu_ref||^2 + tr(sigma + sigma_ref - 2 sqrtm(sigma_ref sigma)); mu (D,),
        sigma (D, D)."""
        sigma = np.atleast_2d(np.float64(sigma))
        mu = self._check(mu, sigma.shape[-1])
        gram = self.factor @ sigma @ self.factor.T
        return self._distance(mu, float(np.trace(sigma)), gram)

    def distance_to_features(self, feats) -> float:
        """`distance` to the Gaussian fitted to (N, D) features (mean, unbiased covariance)."""
        f = np.asarray(feats, np.float64).reshape(len(feats), -1)
        if len(f) < 2:
            raise ValueError(f"need at least 2 feature vectors for a covariance, got {len(f)}")
        mu = self._check(f.mean(axis=0), f.shape[1])
        if len(f) > len(self.factor):
            return self.distance(*mean_cov(f))
        g = (f - mu) / np.sqrt(len(f) - 1)  # sigma = g^T g
        c = g @ self.factor.T  # (N, R): the Gram matrix c c^T is N x N
        return self._distance(mu, float(np.sum(g * g)), c @ c.T)


def inception_score_splits(logits, num_splits: int = 10) -> np.ndarray:
    """Per-split scores exp(E_x KL(p(y|x) || p(y))) over consecutive splits (np.array_split)."""
    logits = np.asarray(logits, np.float64)
    if logits.ndim != 2 or len(logits) < num_splits:
        raise ValueError(f"need (N >= {num_splits}, K) logits, got shape {logits.shape}")
    scores = []
    for part in np.array_split(logits, num_splits):
        logp = part - _logsumexp(part)
        p = np.exp(logp)
        # log p(y) = log mean_x p(y|x), via logsumexp so classes with p ~ 0 stay finite
        log_py = _logsumexp(logp.T).T - np.log(len(part))
        kl = np.sum(p * (logp - log_py), axis=1)
        scores.append(math.exp(float(np.mean(kl))))
    return np.asarray(scores)


def _logsumexp(x):
    m = np.max(x, axis=1, keepdims=True)
    return m + np.log(np.sum(np.exp(x - m), axis=1, keepdims=True))


def inception_score(logits, num_splits: int = 10) -> float:
    """ADM's Inception Score: the mean of `inception_score_splits` (10 splits)."""
    return float(np.mean(inception_score_splits(logits, num_splits)))


# --------------------------------------------------------------- KID (unbiased MMD, cubic kernel)

KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000


def kid_subsets(
    features_a,
    features_b,
    *,
    num_subsets: int = KID_SUBSETS,
    subset_size: int = KID_SUBSET_SIZE,
    seed: int = 0,
) -> np.ndarray:
    """(num_subsets,) unbiased MMD^2 estimates between two feature sets (Binkowski et al. 2018).

    Kernel k(x, y) = (x.y / d + 1)^3 (d = feature size). Each subset draws m = min(subset_size,
    N_a, N_b) rows of each set without replacement (``np.random.default_rng(seed)``) and gives
      MMD^2 = sum_{i!=j} k(a_i, a_j) / (m (m-1)) + sum_{i!=j} k(b_i, b_j) / (m (m-1))
              - 2 sum_{i,j} k(a_i, b_j) / m^2,
    the formula of clean-fid and torch-fidelity (100 subsets of 1000 there). In float64. When
    m equals both set sizes every subset is the whole of both sets: computed once and repeated.
    """
    a = np.asarray(features_a, np.float64).reshape(len(features_a), -1)
    b = np.asarray(features_b, np.float64).reshape(len(features_b), -1)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"KID of features of different sizes: {a.shape} vs {b.shape}")
    m = min(int(subset_size), len(a), len(b))
    if m < 2:
        raise ValueError(f"KID needs at least 2 feature vectors per set, got {len(a)}, {len(b)}")
    d = a.shape[1]

    def mmd2(x, y):
        kxx = (x @ x.T / d + 1) ** 3
        kyy = (y @ y.T / d + 1) ** 3
        kxy = (x @ y.T / d + 1) ** 3
        within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        return within - 2 * kxy.sum() / (m * m)

    if m == len(a) == len(b):
        return np.full(int(num_subsets), mmd2(a, b))
    rng = np.random.default_rng(seed)
    return np.asarray(
        [
            mmd2(a[rng.choice(len(a), m, replace=False)], b[rng.choice(len(b), m, replace=False)])
            for _ in range(int(num_subsets))
        ]
    )


def kid(
    features_a,
    features_b,
    *,
    num_subsets: int = KID_SUBSETS,
    subset_size: int = KID_SUBSET_SIZE,
    seed: int = 0,
) -> tuple[float, float]:
    """Kernel Inception Distance: (mean, SE) over `kid_subsets` (SE = std(ddof=1) / sqrt(S)).

    The mean is unbiased for MMD^2 at any N (FID is biased upward at small N); it can be
    slightly negative when the two sets come from one distribution. The SE measures only the
    subset resampling (subsets overlap; 0 when one subset is the whole of both sets): the
    sampling error of the images themselves needs independent seeds."""
    vals = kid_subsets(
        features_a, features_b, num_subsets=num_subsets, subset_size=subset_size, seed=seed
    )
    spread = len(vals) > 1 and np.ptp(vals) > 0  # (np.std of equal values may round above 0)
    se = float(np.std(vals, ddof=1) / np.sqrt(len(vals))) if spread else 0.0
    return float(np.mean(vals)), se


# ---------------------------------------------------------------- precision / recall (k-NN)


def _sq_dists(u, v):
    nu = jnp.sum(u * u, axis=1)[:, None]
    nv = jnp.sum(v * v, axis=1)[None, :]
    uv = jnp.dot(u, v.T, precision=jax.lax.Precision.HIGHEST)
    return jnp.maximum(nu - 2 * uv + nv, 0.0)


@jax.jit
def _knn_block(u, v, v_valid, running):
    """Merges the k+1 smallest distances from rows u to columns v (invalid columns ignored)."""
    d = jnp.where(v_valid[None, :], _sq_dists(u, v), jnp.inf)
    both = jnp.concatenate([running, d], axis=1)
    return -jax.lax.top_k(-both, running.shape[1])[0]


@jax.jit
def _in_manifold_block(a, a_radii, a_valid, b, b_radii, b_valid):
    """For a block of A rows and B columns: (A row within some B ball, B col within some A ball)."""
    d = _sq_dists(a, b)
    a_in = jnp.any((d <= b_radii[None, :]) & b_valid[None, :], axis=1)
    b_in = jnp.any((d <= a_radii[:, None]) & a_valid[:, None], axis=0)
    return a_in, b_in


def _blocks(x, block: int):
    """Pads (N, D) float32 to a multiple of `block`; yields (start, block array, valid mask)."""
    x = np.asarray(x, np.float32).reshape(len(x), -1)
    n = len(x)
    nb = max(1, -(-n // block))
    padded = np.zeros((nb * block, x.shape[1]), np.float32)
    padded[:n] = x
    valid = np.arange(nb * block) < n
    return [
        (i * block, padded[i * block : (i + 1) * block], valid[i * block : (i + 1) * block])
        for i in range(nb)
    ]


def manifold_radii(features, k: int = 3, block_size: int = 10000) -> np.ndarray:
    """(N,) squared distance of each point to its k-th nearest neighbour (itself = 0-th)."""
    n = len(features)
    if n <= k:
        raise ValueError(f"need more than k={k} points for k-NN radii, got {n}")
    block = min(block_size, n)
    blocks = _blocks(features, block)
    radii = np.zeros(n, np.float32)
    for r0, rows, rvalid in blocks:
        running = jnp.full((block, k + 1), jnp.inf, jnp.float32)
        for _, cols, cvalid in blocks:
            running = _knn_block(rows, cols, cvalid, running)
        m = int(rvalid.sum())
        radii[r0 : r0 + m] = np.asarray(running[:m, k])
    return radii


def precision_recall(
    ref_features, sample_features, k: int = 3, block_size: int = 10000
) -> tuple[float, float]:
    """Improved precision and recall of samples w.r.t. references (see module doc)."""
    ref_radii = manifold_radii(ref_features, k, block_size)
    sample_radii = manifold_radii(sample_features, k, block_size)
    return precision_recall_from_radii(
        ref_features, ref_radii, sample_features, sample_radii, block_size
    )


def precision_recall_from_radii(
    ref_features, ref_radii, sample_features, sample_radii, block_size: int = 10000
) -> tuple[float, float]:
    n_ref, n_sample = len(ref_features), len(sample_features)
    rb, sb = min(block_size, n_ref), min(block_size, n_sample)
    ref_blocks = _blocks(ref_features, rb)
    sample_blocks = _blocks(sample_features, sb)
    ref_r = np.zeros(len(ref_blocks) * rb, np.float32)
    ref_r[:n_ref] = ref_radii
    sam_r = np.zeros(len(sample_blocks) * sb, np.float32)
    sam_r[:n_sample] = sample_radii
    ref_in = np.zeros(len(ref_r), bool)
    sample_in = np.zeros(len(sam_r), bool)
    for r0, rows, rvalid in ref_blocks:
        for s0, cols, cvalid in sample_blocks:
            a_in, b_in = _in_manifold_block(
                rows, ref_r[r0 : r0 + rb], rvalid, cols, sam_r[s0 : s0 + sb], cvalid
            )
            ref_in[r0 : r0 + rb] |= np.asarray(a_in)
            sample_in[s0 : s0 + sb] |= np.asarray(b_in)
    precision = float(np.mean(sample_in[:n_sample]))
    recall = float(np.mean(ref_in[:n_ref]))
    return precision, recall


# ------------------------------------------------------------------- features and full suite


def extract_features(
    extractor: FeatureExtractor,
    images: np.ndarray | Iterable[np.ndarray],
    *,
    batch_size: int = 200,
    keys: tuple[str, ...] | None = None,
    desc: str | None = None,
    total: int | None = None,
) -> dict[str, np.ndarray]:
    """Runs the extractor over uint8 NHWC images (an array or an iterable of batches).

    Batches are padded to a fixed size (one compilation) that divides over this process's
    devices and sharded over them. Multi-process: every process computes the features of all the
    images it is given on its own devices (no cross-host traffic; feature extraction is cheap
    next to sampling). Returns {key: (N, D) float32 numpy}. ``desc``: a progress bar with that
    label (``total`` images; an array's length by default).
    """
    from nag_jax.utils import progress_bar

    devices = jax.local_devices()
    nd = len(devices)
    batch_size = max(nd, -(-batch_size // nd) * nd)
    mesh = jax.sharding.Mesh(np.asarray(devices), ("batch",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("batch"))
    jitted = jax.jit(extractor.fn)
    if extractor.params is not None:
        replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        params = jax.device_put(extractor.params, replicated)
        call = lambda b: jitted(params, b)
    else:
        call = jitted
    if isinstance(images, np.ndarray):
        total = len(images) if total is None else total
        images = [images[i : i + batch_size] for i in range(0, len(images), batch_size)]
    out: dict[str, list] = {}
    bar = progress_bar(total=total, desc=desc) if desc else None
    for batch in _rebatch(images, batch_size):
        n = len(batch)
        if batch.dtype != np.uint8:
            raise ValueError(
                f"extract_features expects uint8 images, got {batch.dtype}; convert [-1, 1] "
                "floats with nag_jax.utils.to_uint8."
            )
        if n < batch_size:
            batch = np.concatenate([batch, np.repeat(batch[-1:], batch_size - n, 0)], 0)
        feats = call(jax.device_put(batch, sharding))
        for key, v in feats.items():
            if keys is None or key in keys:
                out.setdefault(key, []).append(np.asarray(v[:n], np.float32))
        if bar is not None:
            bar.update(n)
    if bar is not None:
        bar.close()
    return {k: np.concatenate(vs, 0) for k, vs in out.items()}


def _rebatch(batches: Iterable[np.ndarray], batch_size: int):
    buf, n = [], 0
    for b in batches:
        b = np.asarray(b)
        while len(b):
            take = b[: batch_size - n]
            buf.append(take)
            n += len(take)
            b = b[len(take) :]
            if n == batch_size:
                yield np.concatenate(buf, 0)
                buf, n = [], 0
    if n:
        yield np.concatenate(buf, 0)


def compute_metrics(
    sample_features: Mapping[str, np.ndarray],
    reference,
    *,
    k: int = 3,
    num_splits: int = 10,
    block_size: int = 10000,
) -> dict[str, float]:
    """All metrics the features allow. `reference` is a nag_jax.evaluation.reference_stats
    ReferenceStats (mu/sigma, optional spatial stats and pool features for precision/recall).

    Returns {"fid", ["sfid"], ["inception_score"], ["kid", "kid_se", "precision", "recall"]}
    (floats; KID and precision/recall need the reference's pool features).
    """
    out = {}
    mu, sigma = mean_cov(sample_features["pool"])
    out["fid"] = frechet_distance(mu, sigma, reference.mu, reference.sigma)
    if "spatial" in sample_features and reference.mu_s is not None:
        mu_s, sigma_s = mean_cov(sample_features["spatial"])
        out["sfid"] = frechet_distance(mu_s, sigma_s, reference.mu_s, reference.sigma_s)
    if "logits" in sample_features and len(sample_features["logits"]) >= num_splits:
        out["inception_score"] = inception_score(sample_features["logits"], num_splits)
    if reference.pool_features is not None:
        out["kid"], out["kid_se"] = kid(reference.pool_features, sample_features["pool"])
        p, r = precision_recall(reference.pool_features, sample_features["pool"], k, block_size)
        out["precision"], out["recall"] = p, r
    return out
