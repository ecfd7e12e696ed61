"""A training run's checkpoints as weights: a release-like base without the null noise token,
the EMA params of one step, the shipped base with a zero token for unguided rows.

``export_base`` is how ``nag_jax/assets/demo_base`` was made from the configs/demo_pretrain.py
run (and ``nag_jax/assets/fmnist_base`` from configs/fmnist_pretrain.py's, raw params at step
3000:

    python -m nag_jax.training.export configs/fmnist_pretrain.py \
        runs/fmnist_pretrain/checkpoints nag_jax/assets/fmnist_base --step=3000 --which=params
); the demo study (``nag_jax.jobs.study``) uses all three. Paths go through
``nag_jax.storage.paths`` (local or ``gs://``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from nag_jax.storage import weights
from nag_jax.storage.paths import as_path
from nag_jax.training.finetune import NULL_TOKEN


def export_base(
    config, checkpoints: str, dest: str, *, step: int | None = None, force=False, which="ema"
):
    """Writes a training run's EMA params (``which="params"``: the raw params; a short run's EMA
    still carries ``ema_decay ** step`` of the random init) WITHOUT the null noise token to
    ``dest``, as a release.

    ``checkpoints``: a training workdir's ``checkpoints/`` directory; ``step``: the step to take
    (None: the latest). The result has the converter's layout (params + metadata) and no null
    token, like a converted DiT/SiT release: the NAG fine-tune creates the token.
    """
    root = as_path(checkpoints)
    steps = sorted(int(d.name) for d in root.iterdir() if d.name.isdigit()) if root.exists() else []
    if not steps or (step is not None and int(step) not in steps):
        raise FileNotFoundError(
            f"{checkpoints} has no checkpoint step {step if step is not None else ''}; "
            f"steps found: {steps}. Point at a training workdir's checkpoints/ directory."
        )
    step = int(step) if step is not None else steps[-1]
    if which not in ("ema", "params"):
        raise ValueError(f"export_base which={which!r}: expected 'ema' or 'params'")
    sub = "ema_params" if which == "ema" else "params"
    params = dict(weights.load_params(str(root / str(step) / sub))[0])
    params.pop(NULL_TOKEN, None)
    m = config.model
    patch = int(params["x_embedder"]["proj"]["kernel"].shape[0])
    meta = dict(  # the converter's metadata fields (nag_jax.convert.common.Architecture)
        family=str(m.name).split("-")[0],
        model=str(m.name),
        custom_size=True,
        input_size=int(m.input_size),
        in_channels=int(m.in_channels),
        out_channels=int(m.in_channels) * (2 if m.learn_sigma else 1),
        num_classes=int(m.num_classes),
        learn_sigma=bool(m.learn_sigma),
        hidden_size=int(m.hidden_size),
        depth=int(m.depth),
        num_heads=int(m.num_heads),
        patch_size=patch,
        mlp_hidden=int(params["blocks_0"]["mlp"]["fc1"]["kernel"].shape[1]),
        null_noise=None,
        source=str(root),
        step=step,
        weights=which,
    )
    weights.save_params(dest, params, meta, force=force)
    return dest


def load_ema_params(path: str, step: int, *, what: str = "path", fix: str = ""):
    """EMA params (jax arrays) of step ``step`` of a training workdir (it must have reached it).

    ``what`` names the setting that gave ``path`` and ``fix`` says what to do, in the error.
    """
    ckpt = as_path(path) / "checkpoints" / str(step) / "ema_params"
    if not ckpt.is_dir():
        raise FileNotFoundError(
            f"{what}={path} has no step {step} ({ckpt} does not exist): "
            + (fix or f"run that training to step {step} first.")
        )
    return jax.tree.map(jnp.asarray, weights.load_params(str(ckpt))[0])


def with_zero_null_token(params, hidden_size: int):
    """``params`` (jax arrays) plus an all-zero null noise token where it has none (a base
    trained without noise-condition dropout: usable by rows that do not use NAG)."""
    params = dict(jax.tree.map(jnp.asarray, params))
    params.setdefault(NULL_TOKEN, jnp.zeros((int(hidden_size),)))
    return params


def main(argv=None) -> None:
    """``python -m nag_jax.training.export CONFIG CHECKPOINTS DEST [--step N] [--which W]``."""
    import argparse
    import os

    from nag_jax.config import schema

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("config", help="the training run's config file (configs/*.py)")
    ap.add_argument("checkpoints", help="the training workdir's checkpoints/ directory")
    ap.add_argument("dest", help="where the base weights go (a new directory)")
    ap.add_argument("--step", type=int, default=None, help="default: the latest")
    ap.add_argument("--which", choices=("ema", "params"), default="ema")
    ap.add_argument("--force", action="store_true", help="overwrite DEST")
    a = ap.parse_args(argv)
    if not os.path.exists(a.config):
        raise SystemExit(f"config file {a.config!r} not found (give a configs/*.py path)")
    config = schema.config_file(a.config)
    schema.resolve(config)
    export_base(config, a.checkpoints, a.dest, step=a.step, force=a.force, which=a.which)
    print(f"wrote {a.dest} ({a.which} of step {a.step or 'latest'})")


if __name__ == "__main__":
    main()
