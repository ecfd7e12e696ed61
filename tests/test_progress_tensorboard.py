"""What a user reads while training: the progress line (rates without the side work, ETA) on a
fake clock, and the TensorBoard event files of a tiny run (lr, grad norm, the NAG branches'
losses, hparams), read back with TensorFlow's own event reader."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from nag_jax.training.metrics import Progress, create_writer, format_duration
from tests.helpers import read_tensorboard


class FakeClock:
    def __init__(self, times):
        self.times = list(times)

    def __call__(self):
        return self.times.pop(0)


def test_progress_excludes_side_work_from_the_rates_and_not_from_the_eta():
    # t=0 start at step 10; sampling from t=2 to t=5 (3 s); report at step 20 at t=7.
    progress = Progress(100, 8, start_step=10, clock=FakeClock([0.0, 2.0, 5.0, 7.0]))
    with progress.excluded("sample"):
        pass
    report = progress(20)
    assert report["steps_per_sec"] == pytest.approx(10 / (7 - 3))  # 2.5: training time only
    assert report["examples_per_sec"] == pytest.approx(2.5 * 8)
    assert report["eta_seconds"] == pytest.approx(80 * 7 / 10)  # 56 s at the wall-clock pace
    assert report["seconds_sample"] == pytest.approx(3.0)
    line = progress.line(20, report, {"loss": 0.5, "grad_norm": 1.25, "lr": 1e-4})
    assert line.startswith("step 20/100 (20.0%) | 2.5 steps/s, 20 examples/s | ETA 0:00:56 |")
    assert "loss 0.5000" in line and "grad_norm 1.25" in line and "lr 0.0001" in line
    assert line.endswith("excluded sample 3.0s")
    branches = {"loss": 0.5, "loss_noise_kept": 0.4, "loss_noise_dropped": 0.7}
    assert "loss 0.5000 (noise kept 0.4000, noise dropped 0.7000)" in progress.line(
        20, {}, {**branches, "frac_drop_noise": 0.25}
    )
    # no dropped example in the batch: its branch loss (0 by convention) is not shown
    assert "loss 0.5000 (noise kept 0.4000) |" in progress.line(
        20, {}, {**branches, "frac_drop_noise": 0.0, "lr": 1.0}
    )


def test_progress_interval_restarts_and_a_report_without_steps_is_empty():
    progress = Progress(50, 4, start_step=0, clock=FakeClock([0.0, 1.0, 3.0, 4.0]))
    assert progress(0) == {}  # t=1: nothing timed yet
    first = progress(4)  # t=3: 4 steps in 3 s
    assert first["steps_per_sec"] == pytest.approx(4 / 3)
    second = progress(6)  # t=4: 2 steps in the 1 s since the last report
    assert second["steps_per_sec"] == pytest.approx(2.0)
    assert "seconds_sample" not in second
    assert second["eta_seconds"] == pytest.approx(44 * 1 / 2)


def test_format_duration_is_h_mm_ss_rounded_up():
    assert format_duration(3725.2) == "1:02:06"
    assert format_duration(0.2) == "0:00:01"
    assert format_duration(0) == "0:00:00"
    assert format_duration(36000) == "10:00:00"


def test_writer_off_writes_nothing(tmp_path):
    writer = create_writer(str(tmp_path), tensorboard=False)
    writer.write_scalars(1, {"loss": 1.0})
    writer.write_hparams({"a": 1})
    writer.close()
    assert os.listdir(tmp_path) == []


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A 4-step run of the tiny config through the project's NAG objective, TensorBoard on,
    logging every 2 steps, lr warming up linearly over 4 steps."""
    from nag_jax.training.loop import run
    from tests.fixtures import tiny_config, tiny_model

    workdir = str(tmp_path_factory.mktemp("tb_run"))
    cfg = tiny_config(num_steps=4, log_every=2, checkpoint_every=0, tensorboard=True)
    cfg.optim.update(lr=1e-3, warmup_steps=4)
    cfg.objective.update(p_class_drop=0.5, p_noise_drop=0.5)  # both branches in every batch
    run(cfg, workdir, model=tiny_model(cfg))
    return cfg, workdir


def test_training_writes_lr_grad_norm_branch_losses_and_hparams(tiny_run):
    cfg, workdir = tiny_run
    tags = read_tensorboard(workdir)
    # lr of the update that made step s: optax counts from 0, so linear warmup gives
    # lr * (s - 1) / warmup: step 2 -> 2.5e-4, step 4 -> 7.5e-4.
    assert tags[("lr", 2)] == pytest.approx(2.5e-4, rel=1e-6)
    assert tags[("lr", 4)] == pytest.approx(7.5e-4, rel=1e-6)
    for step in (2, 4):
        loss = tags[("loss", step)]
        kept, dropped = tags[("loss_noise_kept", step)], tags[("loss_noise_dropped", step)]
        frac = tags[("frac_drop_noise", step)]
        assert 0 < frac < 1
        # the batch loss is the mix of the two branches by their share of the batch
        assert loss == pytest.approx(frac * dropped + (1 - frac) * kept, rel=1e-5)
        assert tags[("grad_norm", step)] > 0 and tags[("steps_per_sec", step)] > 0
    (hparams,) = [v for (tag, _), v in tags.items() if tag == "_hparams_/session_start_info"]
    assert b"optim.lr" in hparams and b"model.name" in hparams and b"SiT-S/2" in hparams


def test_inspect_reads_a_training_checkpoints_directory(tiny_run, capsys):
    from nag_jax.convert.__main__ import main as convert_main

    _, workdir = tiny_run
    assert convert_main(["inspect", os.path.join(workdir, "checkpoints"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "orbax"
    assert info["entries"]["x_embedder/proj/kernel"] == [[2, 2, 3, 32], "float32"]
    # an optimizer state is lists of dicts: its paths carry the list indices
    assert convert_main(["inspect", os.path.join(workdir, "checkpoints", "4", "opt_state")]) == 0
    out = capsys.readouterr().out
    assert "0/0/mu/x_embedder/proj/kernel" in out and "float32" in out


def test_latent_grids_are_decoded_when_a_decoder_is_given(tmp_path):
    from nag_jax.training.loop import write_grid

    writer = create_writer(str(tmp_path))
    latents = np.zeros((4, 2, 2, 4), np.float32)
    latents[..., 0] = 1.0
    raw = write_grid(str(tmp_path), writer, 7, latents)
    assert raw.endswith("step_00000007_latents.npy")
    # stand-in decoder: 2x2x4 latents -> 4x4 RGB, channel 0 -> red (1.0 -> uint8 255)
    decode = lambda z: np.repeat(np.repeat(z[..., :3], 2, axis=1), 2, axis=2)
    png = write_grid(str(tmp_path), writer, 8, latents, decode)
    writer.flush()
    assert png.endswith("step_00000008.png")
    from PIL import Image

    grid = np.asarray(Image.open(png))
    assert grid.shape == (2 * 4 + 3 * 2, 2 * 4 + 3 * 2, 3)  # 2x2 tiles of 4 px, 2 px padding
    assert tuple(grid[2, 2]) == (255, 128, 128)  # first tile's first pixel: red 1, others 0
    assert ("samples", 8) in read_tensorboard(str(tmp_path))
