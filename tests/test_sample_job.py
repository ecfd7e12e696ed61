"""mode "sample" (nag_jax/jobs/sample.py) on tiny converted checkpoints, 8 virtual CPU devices.

End to end against the PyTorch reference: the job's uint8 images equal the release-style Euler ODE
run in torch from the same initial noise (derived from the job's per-image keys).
Time convention: SiT, t = 0 noise, t = 1 data.
"""

from __future__ import annotations

import types

import jax
import numpy as np
import pytest
import torch
import torch_reference as R

from nag_jax import utils
from nag_jax.convert import to_orbax as T
from nag_jax.jobs import sample as sample_job
from nag_jax.sampling import build, generate

TINY = dict(input_size=8, hidden_size=32, depth=2, num_heads=4, num_classes=10)


def make_ckpt(tmp_path, in_channels=3, seed=0):
    m = R.rerandomize(R.create("SiT-S/2", in_channels=in_channels, **TINY), seed).eval()
    src = str(tmp_path / f"tiny{in_channels}.pt")
    torch.save(m.state_dict(), src)
    dest = str(tmp_path / f"ckpt{in_channels}")
    T.convert(src, dest, "SiT", num_heads=4)
    return m, dest


def sample_config(ckpt, **sample):
    import importlib.util

    spec = importlib.util.spec_from_file_location("cfg", "configs/sample_sit_xl.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config()
    c.model.weights = ckpt
    c.sample.sampler, c.sample.num_steps, c.sample.cfg_scale = "ode", 3, 2.0
    c.sample.num_images, c.sample.batch_size, c.sample.labels = 5, 4, (1, 2, 3)
    c.vae.path = sample.pop("vae", None)
    for k, v in sample.items():
        c.sample[k] = v
    return c


def test_pixel_model_grid_npz_match_torch_reference(tmp_path):
    tm, ckpt = make_ckpt(tmp_path)
    out = sample_job.run(sample_config(ckpt), str(tmp_path / "wd"))
    data = np.load(out["npz"])
    assert data["arr_0"].shape == (5, 8, 8, 3) and data["arr_0"].dtype == np.uint8
    np.testing.assert_array_equal(data["arr_1"], [1, 2, 3, 1, 2])
    assert out["batch_size"] == 8  # padded to the 8 devices
    assert (tmp_path / "wd" / "samples" / "grid.png").exists()
    # Independent expectation: torch reference ODE (release grid K = steps + 1) from the x0 of
    # images 0..4 of seed 0 (the public identity: generate.image_keys, build.initial_noise).
    x0 = build.initial_noise(generate.image_keys(0, np.arange(5)), (8, 8, 3))
    x0 = torch.from_numpy(np.asarray(x0).transpose(0, 3, 1, 2).copy())
    ref = R.sit_euler_ode(tm, x0, torch.tensor([1, 2, 3, 1, 2]), 4, cfg_scale=2.0)
    ref = utils.to_uint8(ref.numpy().transpose(0, 2, 3, 1))
    assert np.abs(ref.astype(int) - data["arr_0"].astype(int)).max() <= 1
    # Per-image keys: the same images whatever the batch size.
    out2 = sample_job.run(sample_config(ckpt, batch_size=16), str(tmp_path / "wd2"))
    d2 = np.load(out2["npz"])["arr_0"]
    assert np.abs(d2.astype(int) - data["arr_0"].astype(int)).max() <= 1


def test_latent_model_decodes_with_vae(tmp_path, monkeypatch):
    _, ckpt = make_ckpt(tmp_path, in_channels=4)
    with pytest.raises(ValueError, match="set --config.vae.path"):
        sample_job.run(sample_config(ckpt), str(tmp_path / "wd"))
    import nag_jax.models.vae as vae_lib

    calls = []

    def fake_load_vae(path, chunk_size=8):
        calls.append(path)

        def decode(params, z):  # (N, 8, 8, 4) latents -> (N, 16, 16, 3) "pixels"
            x = jax.numpy.tanh(z[..., :3] * params["s"])
            return jax.numpy.repeat(jax.numpy.repeat(x, 2, axis=1), 2, axis=2)

        return types.SimpleNamespace(decode=decode), {"s": np.float32(0.5)}

    monkeypatch.setattr(vae_lib, "load_vae", fake_load_vae)
    out = sample_job.run(sample_config(ckpt, vae="some/vae"), str(tmp_path / "wd"))
    assert calls == ["some/vae"]
    assert np.load(out["npz"])["arr_0"].shape == (5, 16, 16, 3)


def test_nag_without_null_token_is_refused(tmp_path):
    _, ckpt = make_ckpt(tmp_path)
    with pytest.raises(ValueError, match="needs a learned null noise token"):
        sample_job.run(sample_config(ckpt, nag_scale=1.0), str(tmp_path / "wd"))
    assert not (tmp_path / "wd").exists()


def test_dit_checkpoint_with_sit_config_is_refused(tmp_path):
    m = R.rerandomize(R.create("DiT-S/2", in_channels=3, **TINY), 0)
    torch.save(m.state_dict(), tmp_path / "d.pt")
    T.convert(str(tmp_path / "d.pt"), str(tmp_path / "dckpt"), "DiT", num_heads=4)
    with pytest.raises(ValueError, match="is a SiT model but the checkpoint is DiT"):
        sample_job.run(sample_config(str(tmp_path / "dckpt")), str(tmp_path / "wd"))


def test_sample_mode_and_eval_mode_draw_the_same_image_i(tmp_path):
    """Image i of a seed is one thing: mode "sample" and mode "eval" give bit-identical uint8
    images and labels for the same weights, seed and sampling settings."""
    from nag_jax.evaluation import samples

    _, ckpt = make_ckpt(tmp_path)
    c = sample_config(ckpt, labels=None)
    c.seed = 3
    out = sample_job.run(c, str(tmp_path / "s"))  # also fits config.model to the checkpoint
    sampled = np.load(out["npz"])
    c.mode = "eval"
    c.eval.update(num_images=5, batch_size=c.sample.batch_size)
    path, _, _ = samples.sample_images(c, str(tmp_path / "e"))
    evaluated = np.load(path)
    np.testing.assert_array_equal(evaluated["arr_0"], sampled["arr_0"])
    np.testing.assert_array_equal(evaluated["arr_1"], sampled["arr_1"])
    # Labels drawn per index from the seed's label key (independent of the batch and count).
    label_key = jax.random.split(jax.random.key(3))[1]
    want = [int(jax.random.randint(jax.random.fold_in(label_key, i), (), 0, 10)) for i in range(5)]
    np.testing.assert_array_equal(sampled["arr_1"], want)
    assert len(np.unique(sampled["arr_0"].reshape(5, -1), axis=0)) == 5
