"""The one weights loader reads every layout the project writes; the atomic publish never leaves
a partial output; mismatched trees are named. Expected arrays are the ones the test writes."""

from __future__ import annotations

import os

import numpy as np
import orbax.checkpoint as ocp
import pytest

from nag_jax.storage import weights


def tree(seed: float):
    return {
        "blocks_0": {"mlp": {"kernel": np.full((2, 3), seed, np.float32)}},
        "null_noise_token": np.arange(4, dtype=np.float32) + seed,
    }


def assert_tree(got, want):
    assert set(got) == set(want) and set(got["blocks_0"]["mlp"]) == {"kernel"}
    np.testing.assert_array_equal(
        got["blocks_0"]["mlp"]["kernel"], want["blocks_0"]["mlp"]["kernel"]
    )
    np.testing.assert_array_equal(got["null_noise_token"], want["null_noise_token"])
    assert isinstance(got["null_noise_token"], np.ndarray)


def save_training_step(root, step: int, raw, ema):
    """A training checkpoint step as training/checkpoint.py lays it out (items as subdirs)."""
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckpt:
        ckpt.save(
            os.path.join(root, str(step)),
            ocp.args.Composite(
                params=ocp.args.StandardSave(raw), ema_params=ocp.args.StandardSave(ema)
            ),
        )


def test_converted_checkpoint_gives_params_and_metadata(tmp_path):
    dest = str(tmp_path / "ckpt")
    weights.save_params(dest, tree(1.0), {"family": "SiT", "model": "SiT-S/2"})
    params, meta = weights.load_params(dest)
    assert_tree(params, tree(1.0))
    assert meta == {"family": "SiT", "model": "SiT-S/2", "format_version": 1}
    assert weights.read_metadata(dest) == meta
    shapes = weights.params_tree_metadata(dest)
    assert tuple(shapes["blocks_0"]["mlp"]["kernel"].shape) == (2, 3)


def test_training_checkpoints_give_the_latest_ema_params(tmp_path):
    ckpts = tmp_path / "wd" / "checkpoints"
    save_training_step(str(ckpts), 10, tree(1.0), tree(2.0))
    save_training_step(str(ckpts), 200, tree(3.0), tree(4.0))  # 200 > 10 numerically
    for path in (ckpts, tmp_path / "wd"):  # checkpoints/ or the workdir above it
        params, meta = weights.load_params(str(path))
        assert_tree(params, tree(4.0))
        assert meta == {}
    assert_tree(weights.load_params(str(ckpts), item="params")[0], tree(3.0))
    assert_tree(weights.load_params(str(ckpts / "10"))[0], tree(2.0))  # one step
    with pytest.raises(weights.CheckpointError, match="item='opt_state'"):
        weights.load_params(str(ckpts), item="opt_state")


def test_bare_trees_params_dirs_and_wrapped_trees(tmp_path):
    weights.save_tree(str(tmp_path / "bare"), tree(5.0))
    assert_tree(weights.load_params(str(tmp_path / "bare"))[0], tree(5.0))
    os.makedirs(tmp_path / "vae")
    weights.save_tree(str(tmp_path / "vae" / "params"), tree(6.0))  # config.json + params/
    assert_tree(weights.load_params(str(tmp_path / "vae"))[0], tree(6.0))
    ocp.PyTreeCheckpointer().save(str(tmp_path / "wrapped"), {"params": tree(7.0)})
    params, meta = weights.load_params(str(tmp_path / "wrapped"))
    assert_tree(params, tree(7.0))
    assert meta == {}


def test_unknown_and_missing_paths_are_named(tmp_path):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    with pytest.raises(weights.CheckpointError, match=r"not a converted checkpoint.*notes\.txt"):
        weights.load_params(str(tmp_path / "other"))
    with pytest.raises(FileNotFoundError, match="nag_jax.convert to-orbax"):
        weights.load_params(str(tmp_path / "nowhere"))


def test_atomic_publish_keeps_the_old_output_on_failure_and_replaces_with_force(tmp_path):
    dest = str(tmp_path / "out.txt")

    def write(text):
        def fn(tmp):
            with open(tmp, "w") as f:
                f.write(text)
            if text == "boom":
                raise OSError("disk full (simulated)")

        return fn

    weights.atomic_publish(write("old"), dest)
    with pytest.raises(FileExistsError, match="already exists; pass --force"):
        weights.atomic_publish(write("new"), dest)
    with pytest.raises(OSError, match="simulated"):
        weights.atomic_publish(write("boom"), dest, force=True)
    assert (tmp_path / "out.txt").read_text() == "old"
    weights.atomic_publish(write("new"), dest, force=True)
    assert (tmp_path / "out.txt").read_text() == "new"
    assert sorted(os.listdir(tmp_path)) == ["out.txt"]  # no temporaries left


def test_param_mismatch_names_missing_unexpected_and_reshaped():
    model = tree(0.0)
    ckpt = {"blocks_0": {"mlp": {"kernel": np.zeros((3, 3))}}, "extra": np.zeros(2)}
    assert weights.param_mismatch(model, ckpt) == [
        "missing in checkpoint: null_noise_token (4,)",
        "unexpected in checkpoint: extra (2,)",
        "shape of blocks_0/mlp/kernel: checkpoint (3, 3) vs model (2, 3)",
    ]
    with pytest.raises(KeyError, match="3 mismatched params"):
        weights.check_params_match(model, ckpt, source="x", error=KeyError)
    weights.check_params_match(model, tree(1.0), source="x")  # same paths and shapes: no error
