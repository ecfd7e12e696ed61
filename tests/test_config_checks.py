"""Impossible config values fail in schema.validate (before any compile), one line each
naming the key, the value and what is allowed (issue 11 item 7)."""

from __future__ import annotations

import glob
import importlib.util
import os

import pytest

from nag_jax.config import schema
from tests.fixtures import tiny_config

NAN, INF = float("nan"), float("inf")

# (key, bad value, words the message must hold besides the key and the value)
BAD = [
    ("optim.lr", NAN, "finite number >= 0"),
    ("optim.lr", INF, "finite number >= 0"),
    ("optim.lr", -INF, "finite number >= 0"),
    ("optim.lr", -1e-4, "finite number >= 0"),
    ("train.num_steps", -5, "integer >= 1"),
    ("train.num_steps", 0, "integer >= 1"),
    ("train.log_every", 0, "integer >= 1"),
    ("train.checkpoint_every", -1, "integer >= 0"),
    ("train.sample_every", -10, "integer >= 0"),
    ("train.eval_every", -1, "integer >= 0"),
    ("train.keep", -2, "integer >= 0"),
    ("train.preemption_sync_every", 0, "integer >= 1"),
    ("optim.warmup_steps", -1, "integer >= 0"),
    ("optim.ema_decay", 1.5, "[0, 1]"),
    ("optim.b2", 1.0, "[0, 1)"),
    ("optim.grad_clip", 0.0, "None or a number > 0"),
    ("objective.p_noise_drop", -0.1, "[0, 1]"),
    ("data.global_batch_size", 0, "integer >= 1"),
    ("data.num_workers", -1, "integer >= 0"),
    ("sample.num_steps", 0, "integer >= 1"),
    ("sample.num_images", -3, "integer >= 1"),
    ("sample.cfg_scale", NAN, "finite number"),
    ("sample.nag_interval", (0.8, 0.2), "0 <= lo <= hi <= 1"),
    ("sample.cfg_interval", (0.0, 1.5), "0 <= lo <= hi <= 1"),
    ("eval.num_images", 0, "integer >= 1"),
    ("vae.chunk_size", 0, "integer >= 1"),
    # sampler keys: checked whether or not the job samples (train.sample_every set or not)
    ("sample.method", "eulr", "('euler', 'heun')"),
    ("sample.sampler", "odee", "'ode', 'sde'"),
    ("sample.diffusion_form", "sigmaa", "'sigma'"),
    ("sample.last_step", "mean", "'Mean'"),
    ("data.bad_images", "ignore", "('skip', 'fail')"),
]


@pytest.mark.parametrize("sample_every", [0, 2])
@pytest.mark.parametrize(("key", "value", "allowed"), BAD, ids=lambda v: str(v))
def test_bad_value_is_one_line_naming_key_value_and_choices(key, value, allowed, sample_every):
    c = tiny_config(sample_every=sample_every)
    section, name = key.split(".")
    c[section][name] = value
    with pytest.raises(ValueError) as e:
        schema.validate(c)
    msg = str(e.value)
    assert "\n" not in msg
    assert f"config.{key}={value!r}" in msg
    assert allowed in msg


@pytest.mark.parametrize(
    ("updates", "message"),
    [
        # pixel model: the image is what the model sees
        (
            {"data.image_size": 16},
            "config.data.image_size=16 is not allowed with config.model.input_size=8: expected 8",
        ),
        # latent model on latents: 8x the latent side (SD-VAE)
        (
            {"data.name": "latents", "model.in_channels": 4, "data.image_size": 32},
            "config.data.image_size=32 is not allowed with config.model.input_size=8: expected 64",
        ),
        ({"data.name": "latents"}, "config.model.in_channels=3 is not allowed"),
        ({"model.in_channels": 4}, "config.model.in_channels=4 is not allowed with the image"),
        (
            {"model.input_size": 7, "data.image_size": 7},
            "config.model.input_size=7 is not allowed: SiT-S/2 cuts it into 2x2 patches",
        ),
    ],
)
def test_data_and_model_shapes_agree(updates, message):
    c = tiny_config()
    for key, value in updates.items():
        section, name = key.split(".")
        c[section][name] = value
    with pytest.raises(ValueError) as e:
        schema.validate(c)
    assert message in str(e.value)


def test_consistent_latent_config_and_several_errors_at_once():
    c = tiny_config()
    c.data.update(name="latents", image_size=64)
    c.model.in_channels = 4
    schema.validate(c)  # 64px -> 8x8x4 latents: fine
    c.optim.lr = NAN
    c.train.num_steps = -5
    with pytest.raises(schema.ConfigError) as e:  # a UserError: one `error:` line, rc 2
        schema.validate(c)
    msg = str(e.value)
    assert "\n" not in msg  # both on one line
    assert msg.startswith("config.optim.lr=nan is not allowed")
    assert ". config.train.num_steps=-5 is not allowed" in msg


def test_training_keys_are_not_checked_outside_training_modes():
    c = tiny_config()
    c.mode = "eval"
    c.train.num_steps = 0  # eval configs do not train
    c.data.image_size = 64  # nor read the training data
    schema.validate(c)


def test_every_shipped_config_is_valid():
    root = os.path.join(os.path.dirname(__file__), "..", "configs")
    for path in sorted(glob.glob(os.path.join(root, "*.py"))):
        spec = importlib.util.spec_from_file_location("cfg", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        schema.validate(module.get_config())
