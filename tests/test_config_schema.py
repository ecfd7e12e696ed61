"""The one config schema (nag_jax.config.schema): every job config derives from it, enumerated
values fail at validation naming the key, and the schema's choices match the modules using them."""

import glob
import importlib.util
import os
import subprocess
import sys

import pytest

from nag_jax import main, sampling
from nag_jax.config import schema
from nag_jax.diffusion import family, transport
from tests.fixtures import tiny_config

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
FILES = sorted(os.path.basename(p) for p in glob.glob(os.path.join(CONFIGS, "*.py")))


def _config(name, arg=None):
    spec = importlib.util.spec_from_file_location(name[:-3], os.path.join(CONFIGS, name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # an import error fails the test (no skip)
    return module.get_config() if arg is None else module.get_config(arg)


def _keys(cfg, prefix=""):
    out = set()
    for k, v in cfg.items():
        out.add(prefix + k)
        if hasattr(v, "items"):
            out |= _keys(v, f"{prefix}{k}.")
    return out


@pytest.mark.parametrize("name", FILES)
def test_every_config_holds_every_schema_key_and_validates(name):
    c = _config(name)
    missing = _keys(schema.base_config()) - _keys(c)
    assert not missing, missing
    schema.validate(c)
    assert c.mode in schema.MODES


def test_the_tiny_test_config_derives_from_the_schema():
    c = tiny_config()
    assert _keys(schema.base_config()) <= _keys(c)
    schema.validate(c)


@pytest.mark.parametrize(
    "key, value",
    [
        ("sample.method", "heunn"),
        ("sample.sampler", "euler"),
        ("model.null_noise", "none"),
        ("model.dtype", "fp16"),
        ("process.path", "cosine"),
        ("train.null_token_init", "mean"),
        ("eval.extractor", "clip"),
        ("mode", "serve"),
    ],
)
def test_a_bad_enumerated_value_fails_at_validation_naming_key_value_and_choices(key, value):
    c = _config("sample_sit_xl.py")
    section, _, k = key.rpartition(".")
    (c[section] if section else c)[k] = value
    allowed = schema.CHOICES[key]
    with pytest.raises(ValueError) as err:
        schema.validate(c)
    msg = str(err.value)
    assert f"config.{key}={value!r}" in msg and str(allowed) in msg


def test_main_validates_before_any_job_runs(tmp_path):
    c = _config("sit_xl.py")
    c.sample.method = "heunn"
    with pytest.raises(ValueError, match=r"config.sample.method='heunn'.*\('euler', 'heun'\)"):
        main.run(c, str(tmp_path))
    assert not os.listdir(tmp_path)  # nothing started


def test_a_sampler_of_the_other_family_fails_at_validation():
    c = _config("dit_xl.py")
    c.sample.sampler = "sde"  # a SiT sampler
    with pytest.raises(ValueError, match=r"sampler='sde' does not apply to DiT-XL/2.*'ddpm'"):
        schema.validate(c)


def test_trainable_must_be_all_null_token_or_a_regex():
    c = tiny_config()
    c.optim.trainable = "t_embedder|null"
    schema.validate(c)
    c.optim.trainable = "(unclosed"
    with pytest.raises(ValueError, match="optim.trainable='\\(unclosed'"):
        schema.validate(c)


def test_a_config_missing_a_schema_key_is_refused():
    c = tiny_config()
    del c.eval["batch_size"]
    with pytest.raises(ValueError, match=r"eval.batch_size"):
        schema.validate(c)


def test_one_method_key_serves_both_integrators_and_every_family_sampler_is_allowed():
    # CHOICES reads the owners' tuples (no copy); what the schema adds is that ONE key,
    # sample.method, feeds both the ODE and the SDE integrator, and one key, sample.sampler,
    # every family's samplers.
    ch = schema.CHOICES
    assert set(ch["sample.method"]) == set(sampling.ODE_METHODS) == set(sampling.SDE_METHODS)
    samplers = [s for f in family.FAMILIES.values() for s in f.samplers]
    assert sorted(ch["sample.sampler"]) == sorted(samplers)
    assert ch["process.path"] is transport.PATHS  # read from the owner, not copied
    assert main.schema.MODES is schema.MODES


def test_importing_the_schema_imports_no_jax():
    code = (
        "import sys; from nag_jax.config import schema; schema.base_config(); "
        "assert 'jax' not in sys.modules, 'jax imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ})


def test_resolve_completes_a_partial_config_once_and_validates_it():
    partial = dict(model=dict(name="DiT-S/2", input_size=8), sample=dict(sampler="ddim", eta=0.5))
    c = schema.resolve(partial, mode="sample")
    assert (c.mode, c.model.name, c.sample.eta, c.sample.sampler) == (
        "sample",
        "DiT-S/2",
        0.5,
        "ddim",
    )
    assert c.model.num_classes == 1000 and c.sample.cfg_interval == (0.0, 1.0)  # schema defaults
    full = tiny_config()
    assert schema.resolve(full) is full  # a job's config already holds every key
    with pytest.raises(ValueError, match="config.sample.method='rk4'"):
        schema.resolve(dict(sample=dict(method="rk4")), mode="sample")
    with pytest.raises(ValueError, match="sampler='sde' does not apply to DiT-S/2"):
        schema.resolve(dict(model=dict(name="DiT-S/2")), mode="sample")


def test_the_library_never_imports_the_config_schema():
    """The config is completed where a job starts (main, jobs/); the library below takes
    sections or plain arguments, so none of its packages imports nag_jax.config."""
    import grimp

    graph = grimp.build_graph("nag_jax", exclude_type_checking_imports=True)
    library = ("sampling", "data", "models", "diffusion", "guidance", "evaluation", "storage")
    importers = {
        m
        for m in graph.find_modules_that_directly_import("nag_jax.config.schema")
        | graph.find_modules_that_directly_import("nag_jax.config")
        if m.split(".")[1] in library
    }
    assert not importers, sorted(importers)


def test_one_name_for_weights_and_vae_and_train_overrides_valid_for_eval():
    for name, mode in [
        ("sit_xl_nag_finetune.py", "train"),
        ("sample_dit_xl.py", "sample"),
        ("eval_sit_xl.py", "eval"),
    ]:
        c = _config(name)
        assert c.mode == mode
        c.model.weights, c.vae.path = "ckpt/w", "ckpt/vae"  # typed placeholders take paths
        # overrides valid for training are valid here too
        c.model.patch_size, c.model.attention_impl, c.model.remat = 4, "xla", True
        schema.validate(c)
        assert "checkpoint" not in c.sample and "checkpoint" not in c.eval
        assert "init_from" not in c.train and "vae_path" not in c.encode


def test_complete_fills_a_partial_config_from_the_schema():
    c = schema.complete(dict(model=dict(name="DiT-S/2", input_size=8), sample=dict(eta=0.5)))
    base = schema.base_config()
    assert (c.model.name, c.model.input_size, c.sample.eta) == ("DiT-S/2", 8, 0.5)
    assert c.model.dtype == base.model.dtype and c.sample.cfg_interval == (0.0, 1.0)
    assert schema.complete(dict(remat=True), "model").num_classes == 1000
