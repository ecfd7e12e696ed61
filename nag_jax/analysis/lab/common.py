"""What both labs share: the process, training with the project's objective, guided sampling of
one row with trajectories, and the number formatting of the reports.

Time conventions: the lab's models are SiT-style (float t in [0, 1], t = 0 noise, t = 1 data);
rows give guidance intervals in the paper's noise level lambda = 1 - t (1 = pure noise).

A *row* is a dict: ``name``, ``cfg`` (CFG scale, 1 = off), ``nag`` (classifier-free NAG scale,
0 = off), optionally ``nag_interval``, ``cls_nag`` (classifier-based NAG scale with a noise-level
estimator, 0 = off) and ``cls_interval`` (noise levels).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from nag_jax import sampling
from nag_jax.analysis.estimator import train_estimator, train_params
from nag_jax.diffusion.family import SIT
from nag_jax.diffusion.transport import Transport
from nag_jax.guidance import GuidanceConfig, guided_prediction
from nag_jax.guidance.classifier import classifier_nag_prediction

LAB_SAMPLERS = ("ode", "sde")


def build_transport(config) -> Transport:
    """The lab's noising process: the SiT family's process of ``config.process``.

    Both labs sample SiT-style models. The GMM lab's MLP denoiser has no registry name
    ("SiT-MLP"), so the process is asked for as for any registered SiT model: only the family
    and ``config.process`` enter ``Family.build_process``.
    """
    name = str(config.model.name)
    if not name.startswith("SiT-"):
        raise ValueError(
            f"config.model.name={name!r}: the lab samples SiT-style models (float t, 0 = noise, "
            "1 = data); use a 'SiT-...' name."
        )
    return SIT.build_process(config.process, learn_sigma=True)


def train_denoiser(key, module, sample_batch, transport, config):
    """Trains ``module`` (conditioning interface of the image models) with the project's nag_loss
    for ``config.train.num_steps`` steps at ``config.optim.lr`` with ``config.objective``'s class
    and noise-condition dropout.

    ``sample_batch(key) -> (x1, y)``. Returns (params, losses).
    """
    from nag_jax.diffusion.objective import nag_loss

    k_init, k_train = jax.random.split(key)
    x1, y = sample_batch(k_init)
    params = module.init(k_init, x1, jnp.zeros(x1.shape[0]), y)["params"]

    def apply_fn(p, x, t, y, drop_class=None, drop_noise=None):
        return module.apply({"params": p}, x, t, y, drop_class, drop_noise)

    def loss_fn(p, k):
        kb, kl = jax.random.split(k)
        x1, y = sample_batch(kb)
        loss, _ = nag_loss(
            apply_fn,
            p,
            x1,
            y,
            kl,
            process=transport,
            p_class_drop=config.objective.p_class_drop,
            p_noise_drop=config.objective.p_noise_drop,
        )
        return loss

    return train_params(
        loss_fn, params, k_train, num_steps=config.train.num_steps, lr=config.optim.lr
    )


def train_lab_estimator(key, sample_x1, transport, est, *, conv: bool = False):
    """The noise-level estimator g(lambda | x) trained on forward samples of ``sample_x1(key, n)``
    with ``config.lab.estimator`` = ``est`` (num_bins, hidden, depth, num_steps, batch_size, lr);
    ``conv`` for images. Returns (estimator, losses)."""
    return train_estimator(
        key,
        sample_x1,
        transport,
        num_bins=est.num_bins,
        hidden=est.hidden,
        depth=est.depth,
        conv=conv,
        num_steps=est.num_steps,
        batch_size=est.batch_size,
        lr=est.lr,
    )


def make_pred_builder(net_fn_factory, transport, row, estimator=None):
    """``params -> pred_fn(x, t, y)``: the guided prediction for one lab row.

    ``net_fn_factory(params) -> net_fn(x, t, y, drop_class, drop_noise)`` (for an image model
    ``build.make_net_fn``). The CFG / NAG setting is the `GuidanceConfig` of the row's
    scales; the branches are fused by ``nag_jax.guidance.guided_prediction`` (one network call
    per step); ``cls_nag`` wraps it in classifier-based NAG with ``estimator``.
    """
    guidance = GuidanceConfig(
        cfg_scale=float(row["cfg"]),
        nag_scale=float(row["nag"]),
        nag_interval=tuple(row.get("nag_interval", (0.0, 1.0))),
    )
    cls_scale = float(row.get("cls_nag", 0.0))
    if cls_scale != 0.0 and estimator is None:
        raise ValueError(f"row {row['name']!r} needs a noise-level estimator (cls_nag != 0)")

    def builder(params):
        pred_fn = guided_prediction(
            net_fn_factory(params), guidance, noise_level_fn=transport.noise_level
        )
        if cls_scale != 0.0:
            pred_fn = classifier_nag_prediction(
                pred_fn,
                estimator,
                cls_scale,
                transport=transport,
                interval=tuple(row.get("cls_interval", (0.0, 0.6))),
            )
        return pred_fn

    return builder


def run_sampler(pred_fn, key, x_init, y, transport, sampler: str, num_steps: int, method: str):
    """The project's SiT sampler ``sampler`` ("ode" | "sde") with ``return_trajectory=True``;
    returns (x, traj). (``build.build_sampler`` builds its prediction from a config; the lab's
    rows bring their own: classifier-NAG, the exact velocity, a non-image network.)"""
    if sampler == "ode":
        return sampling.sample_ode(
            pred_fn,
            x_init,
            y,
            transport=transport,
            num_steps=num_steps,
            method=method,
            return_trajectory=True,
        )
    if sampler == "sde":
        return sampling.sample_sde(
            pred_fn,
            key,
            x_init,
            y,
            transport=transport,
            num_steps=num_steps,
            method=method,
            return_trajectory=True,
        )
    raise ValueError(f"lab sampler={sampler!r}; expected one of {LAB_SAMPLERS}")


def subsample_steps(num_states: int, max_states: int) -> np.ndarray:
    """Evenly spaced trajectory indices including the first and last state."""
    k = min(num_states, max_states)
    return np.unique(np.round(np.linspace(0, num_states - 1, k)).astype(int))


def make_sample_fn(pred_builder, transport, *, sampler, steps, method, max_states):
    """jit(params, y, x_init, key) -> (x, states (K, N, ...), times (K,)) for one setting.

    ``pred_builder(params) -> pred_fn``; states are the trajectory subsampled to at most
    ``max_states`` evenly spaced entries (first and last included). One compile per setting,
    reused across seeds.
    """

    @jax.jit
    def sample_fn(params, y, x_init, key):
        x, traj = run_sampler(
            pred_builder(params), key, x_init, y, transport, sampler, steps, method
        )
        idx = subsample_steps(traj["x"].shape[0], max_states)
        return x, traj["x"][idx], traj["t"][idx]

    return sample_fn


def aggregate(per_seed: list[dict]) -> dict:
    """[{metric: value} per seed] -> {metric: [value per seed]}."""
    return {k: [p[k] for p in per_seed] for k in per_seed[0]}


def fmt(vals, digits: int = 4) -> str:
    """One value as ``0.1234``; several (seeds) as ``mean ± std`` (ddof 1)."""
    vals = np.asarray(vals, dtype=np.float64)
    if vals.size == 1:
        return f"{vals.reshape(-1)[0]:.{digits}f}"
    return f"{vals.mean():.{digits}f} ± {vals.std(ddof=1):.{digits}f}"


def json_default(o):
    """``json.dump(default=...)`` for configs, arrays and numpy scalars."""
    if hasattr(o, "to_dict"):
        return o.to_dict()
    if isinstance(o, (np.ndarray, jax.Array)):
        return np.asarray(o).tolist()
    if isinstance(o, (np.floating, np.integer, np.bool_)):
        return o.item()
    return str(o)
