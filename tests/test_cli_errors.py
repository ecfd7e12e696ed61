"""User errors are one ``error:`` line with exit status 2, before JAX starts and before any config
dump (nag-jax and nag-convert); ``--verbose`` brings the traceback back. The packaged configs are
found from any directory. The processes run in parallel (each pays only its imports)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (name, arguments after the module, text the one line must contain)
CASES = [
    (
        "missing config file",
        ["--config=configs/nope.py", "--workdir=WD"],
        "config file 'configs/nope.py' not found",
    ),
    (
        "override typo",
        ["--config=configs/demo.py", "--config.sample.cfg_scal=4", "--workdir=WD"],
        "unknown config override --config.sample.cfg_scal=4: no key 'cfg_scal'. "
        'Did you mean "cfg_scale"',
    ),
    (
        "bad mode",
        ["--config=configs/demo.py", "--config.mode=trian", "--workdir=WD"],
        "config.mode='trian' is not allowed; expected one of ('train', 'demo',",
    ),
    (
        "bad value type",
        ["--config=configs/demo.py", "--config.sample.cfg_scale=abc", "--workdir=WD"],
        "flag --config.sample.cfg_scale=abc: could not convert string to float: 'abc'",
    ),
    (
        "bad choice",
        ["--config=configs/demo.py", "--config.sample.sampler=heun", "--workdir=WD"],
        "config.sample.sampler='heun' is not allowed",
    ),
    (
        "missing checkpoint",
        ["--config=configs/sample_sit_xl.py", "--config.model.weights=ckpt/none", "--workdir=WD"],
        "config.model.weights: Checkpoint",
    ),
    ("missing workdir", ["--config=configs/demo.py"], "--workdir=DIR is required"),
    # issue 20: value checks were ValueErrors (a 19-line traceback, rc 1, after JAX started)
    (
        "nan learning rate",
        ["--config=configs/demo.py", "--config.optim.lr=nan", "--workdir=WD"],
        "config.optim.lr=nan is not allowed: expected a finite number >= 0",
    ),
    (
        "negative num_steps",
        ["--config=configs/demo.py", "--config.train.num_steps=-5", "--workdir=WD"],
        "config.train.num_steps=-5 is not allowed: expected an integer >= 1",
    ),
    (
        "image size vs model input size",
        [
            "--config=configs/demo.py",
            "--config.mode=train",
            "--config.data.image_size=24",
            "--workdir=WD",
        ],
        "config.data.image_size=24 is not allowed with config.model.input_size=16",
    ),
    (
        "several bad values, one line",
        [
            "--config=configs/demo.py",
            "--config.optim.lr=-1",
            "--config.optim.b1=2",
            "--workdir=WD",
        ],
        "config.optim.lr=-1.0 is not allowed: expected a finite number >= 0 (the releases: 1e-4)."
        " config.optim.b1=2.0 is not allowed",
    ),
    (
        "None for a required key",
        ["--config=configs/demo.py", "--config.sample.cfg_scale=None", "--workdir=WD"],
        "flag --config.sample.cfg_scale=None: could not convert string to float: 'None'",
    ),
]


def _spawn(args, cwd, env):
    return subprocess.Popen(
        [sys.executable, "-m", "nag_jax.main", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """Every case run from an empty directory (so configs/ comes from the package)."""
    cwd = str(tmp_path_factory.mktemp("elsewhere"))
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env["JAX_PLATFORMS"] = "cpu"
    wd = os.path.join(cwd, "wd")
    procs = {name: _spawn([a.replace("WD", wd) for a in args], cwd, env) for name, args, _ in CASES}
    procs["verbose"] = _spawn(
        ["--config=configs/demo.py", "--config.mode=trian", "--verbose"] + [f"--workdir={wd}"],
        cwd,
        env,
    )
    out = {name: (p.wait(timeout=300), *p.communicate()) for name, p in procs.items()}
    return out, wd


@pytest.mark.parametrize("name,args,expected", CASES, ids=[c[0] for c in CASES])
def test_user_error_is_one_line_exit_2(outcomes, name, args, expected):
    results, wd = outcomes
    rc, stdout, stderr = results[name]
    lines = [s for s in stderr.splitlines() if s.strip()]
    assert rc == 2, stderr[-2000:]
    assert lines and lines[-1].startswith("error: ") and expected in lines[-1], lines[-3:]
    assert len(lines) == 1, lines  # one line, nothing before it
    assert "Traceback" not in stderr and "Config" not in stderr + stdout  # no dump, no trace
    assert not [s for s in lines if "xla_bridge" in s or "JAX " in s]  # JAX never started
    assert not os.path.exists(wd)


def test_verbose_shows_the_traceback(outcomes):
    results, _ = outcomes
    rc, _, stderr = results["verbose"]
    assert rc != 0 and "Traceback" in stderr and "ConfigError" in stderr


def test_accelerator_config_on_cpu_stops_unless_allowed(tmp_path):
    from ml_collections import ConfigDict

    from nag_jax.errors import UserError
    from nag_jax.main import check_devices

    class Cpu:
        platform = "cpu"

    class Gpu:
        platform = "gpu"

    cfg = ConfigDict({"model": {"dtype": "bfloat16"}, "parallel": {"allow_cpu": False}})
    with pytest.raises(UserError, match=r"only CPU devices \(2 x cpu\).*allow_cpu=True"):
        check_devices(cfg, [Cpu(), Cpu()])
    check_devices(cfg, [Gpu()])  # an accelerator: fine
    cfg.parallel.allow_cpu = True
    check_devices(cfg, [Cpu()])  # asked for
    cfg.parallel.allow_cpu, cfg.model.dtype = False, "float32"
    check_devices(cfg, [Cpu()])  # float32 configs (the demo) are CPU configs


def test_packaged_config_is_found_from_any_directory(tmp_path, monkeypatch):
    from nag_jax.errors import UserError
    from nag_jax.main import packaged_configs_dir, resolve_config_path

    monkeypatch.chdir(tmp_path)
    packaged = packaged_configs_dir()
    assert os.path.samefile(resolve_config_path("configs/demo.py"), f"{packaged}/demo.py")
    assert resolve_config_path("configs/dit_xl.py:encode").endswith("dit_xl.py:encode")
    assert os.path.samefile(resolve_config_path("sit_xl"), f"{packaged}/sit_xl.py")
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "demo.py").write_text("")
    assert resolve_config_path("configs/demo.py") == "configs/demo.py"  # a local file wins
    with pytest.raises(UserError, match=r"'other/demo.py' not found.*NAME in \[.*'demo'"):
        resolve_config_path("other/demo.py")  # another directory: never silently replaced


def test_convert_missing_torch_names_the_extra(tmp_path, monkeypatch, capsys):
    from nag_jax.convert.__main__ import main as convert_main

    src = tmp_path / "model.pt"
    src.write_bytes(b"")
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ModuleNotFoundError
    rc = convert_main(["to-orbax", str(src), str(tmp_path / "out"), "--family", "SiT"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith("error: nag-convert to-orbax needs torch")
    assert "pip install 'nag_jax[convert]'" in err[0] and "whl/cpu" in err[0]


def test_convert_user_error_is_one_line_and_verbose_raises(tmp_path, capsys):
    from nag_jax.convert.__main__ import main as convert_main

    missing = str(tmp_path / "nope")
    assert convert_main(["inspect", missing]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "nope" in err[0]
    with pytest.raises((FileNotFoundError, ValueError)):
        convert_main(["--verbose", "inspect", missing])
