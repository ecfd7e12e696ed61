"""nag_jax.training.export: a training run's checkpoint as release-like base weights (EMA or raw
params, no null noise token), and its command line."""

import jax
import numpy as np
import pytest

from nag_jax.config import schema
from nag_jax.storage import weights
from nag_jax.training import export
from nag_jax.training import loop as train
from nag_jax.training.finetune import NULL_TOKEN
from tests.fixtures import tiny_config


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    c = tiny_config(num_steps=2, checkpoint_every=2)
    c.model.null_noise = "learned"
    schema.resolve(c)
    workdir = str(tmp_path_factory.mktemp("run"))
    train.run(c, workdir)
    return c, workdir


@pytest.mark.parametrize("which,sub", [("ema", "ema_params"), ("params", "params")])
def test_export_writes_the_chosen_weights_without_the_null_token(run_dir, tmp_path, which, sub):
    c, workdir = run_dir
    dest = str(tmp_path / "base")
    export.export_base(c, f"{workdir}/checkpoints", dest, step=2, which=which)
    got, meta = weights.load_params(dest)
    want = dict(weights.load_params(f"{workdir}/checkpoints/2/{sub}")[0])
    assert NULL_TOKEN in want and NULL_TOKEN not in got  # the run had a token; a release has none
    want.pop(NULL_TOKEN)
    flat = lambda t: jax.tree_util.tree_leaves_with_path(t)  # noqa: E731
    assert [p for p, _ in flat(got)] == [p for p, _ in flat(want)]
    for (_, a), (_, b) in zip(flat(got), flat(want)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert meta["weights"] == which and meta["step"] == 2 and meta["null_noise"] is None


def test_export_ema_and_params_differ_after_training(run_dir, tmp_path):
    c, workdir = run_dir
    for which in ("ema", "params"):
        export.export_base(c, f"{workdir}/checkpoints", str(tmp_path / which), which=which)
    a = weights.load_params(str(tmp_path / "ema"))[0]
    b = weights.load_params(str(tmp_path / "params"))[0]
    diffs = jax.tree.map(lambda x, y: float(np.abs(np.asarray(x) - np.asarray(y)).max()), a, b)
    assert max(jax.tree.leaves(diffs)) > 0  # EMA (decay 0.99) lags the raw params


def test_export_errors_name_the_steps_and_the_choice(run_dir, tmp_path):
    c, workdir = run_dir
    with pytest.raises(FileNotFoundError, match=r"steps found: \[2\]"):
        export.export_base(c, f"{workdir}/checkpoints", str(tmp_path / "x"), step=7)
    with pytest.raises(ValueError, match="'ema' or 'params'"):
        export.export_base(c, f"{workdir}/checkpoints", str(tmp_path / "x"), which="best")


def test_export_command_line(run_dir, tmp_path, capsys):
    _, workdir = run_dir
    cfg = tmp_path / "tiny.py"
    cfg.write_text(
        "from tests.fixtures import tiny_config\n\n\ndef get_config():\n"
        "    c = tiny_config(num_steps=2, checkpoint_every=2)\n"
        "    c.model.null_noise = 'learned'\n    return c\n"
    )
    dest = str(tmp_path / "out")
    export.main([str(cfg), f"{workdir}/checkpoints", dest, "--which=params"])
    assert "wrote" in capsys.readouterr().out
    assert weights.load_params(dest)[1]["weights"] == "params"
    with pytest.raises(SystemExit, match="not found"):
        export.main([str(tmp_path / "nope.py"), f"{workdir}/checkpoints", dest])
