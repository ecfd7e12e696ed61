"""Entry point: ``python -m nag_jax.main --config=configs/NAME.py --workdir=DIR``.

``config.mode`` picks the job (nag_jax.config_schema.MODES); ``--config.a.b=value`` overrides any
field (ml_collections); the config is checked against the one schema (nag_jax.config_schema)
before the job starts, so a bad value fails here, naming the key and its choices:

    train           train or fine-tune (nag_jax.training.train)
    demo            the built-in demo: NAG fine-tune of the shipped base, none/CFG/NAG/CFG+NAG
    sample          sample a grid + .npz from converted or trained weights (nag_jax.sample_job)
    eval            sample N images and score them (nag_jax.evaluation.eval_job)
    lab             the noise-shift lab report (nag_jax.analysis.lab)
    study           the demo's fuller NAG study (nag_jax.analysis.demo_study)
    encode_latents  encode an image dataset to SD-VAE latent shards (nag_jax.data.encode_latents)
    sweep           guidance grid (s_cfg, w_nag, DoG, intervals), one compiled sampler

Each job module is imported only when its mode runs, so the core needs none of the others'
dependencies (TensorFlow, torch).
"""

from __future__ import annotations

import importlib

from absl import app, flags, logging
from ml_collections import config_flags

from nag_jax import config_schema

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to an ml_collections config file (configs/*.py).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, samples and logs.")


def run(config, workdir: str):
    """Validates ``config`` (nag_jax.config_schema) and runs ``config.mode``'s job
    ``run(config, workdir)``. Training gets its evaluators from nag_jax.evaluation.evaluators
    here, so training and evaluation never import each other."""
    config_schema.validate(config)
    module = importlib.import_module(config_schema.MODES[config.mode])
    if config.mode == "train":
        from nag_jax.evaluation import evaluators

        return module.run(config, workdir, make_evaluators=evaluators.from_config(config, workdir))
    return module.run(config, workdir)


class _QuietLibraries:
    """Drops INFO records of orbax / grain internals so progress lines stay readable."""

    NOISY = ("/orbax/", "/grain/", "/etils/")

    def filter(self, record) -> bool:
        return record.levelno > 20 or not any(n in record.pathname for n in self.NOISY)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if _CONFIG.value is None:
        raise app.UsageError("--config=configs/NAME.py is required (see configs/).")
    if not _WORKDIR.value:
        raise app.UsageError("--workdir=DIR is required (checkpoints, samples and logs go there).")
    import jax

    from nag_jax import parallel

    logging.get_absl_handler().addFilter(_QuietLibraries())
    # Multi-host: jax.distributed must be initialised before any backend call (no-op otherwise).
    parallel.maybe_initialize_distributed()
    logging.info("JAX %s on %s", jax.__version__, jax.devices())
    logging.info("Config (mode=%s):\n%s", _CONFIG.value.mode, _CONFIG.value)
    run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
