"""SD-VAE weights: diffusers folder -> Flax (nag_jax.models.vae), converted folders
(nag_jax.convert.vae)
and nag_jax.models.vae.load_vae.

Pins: strict conversion (missing / extra / mis-shaped keys, config that does not match the
weights) with errors naming the keys and nothing written; loading a diffusers folder the test
writes (safetensors and .bin, legacy attention names, pipeline ``vae/`` subfolder); Orbax round
trip and the CLI; clear errors for missing files. Tiny random configuration (test_vae.TINY).
"""

from __future__ import annotations

import argparse
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from safetensors.torch import save_file
from test_vae import (
    TINY,
    diffusers_config,
    latents,
    make_torch_vae,
    rel_err,
    torch_decode,
)

from nag_jax.convert import vae as convert_vae
from nag_jax.models import vae as vae_lib


@pytest.fixture(scope="module")
def torch_vae():
    return make_torch_vae(TINY, seed=5)


@pytest.fixture(scope="module")
def state_dict(torch_vae):
    return {k: v.detach().clone().contiguous() for k, v in torch_vae.state_dict().items()}


def write_folder(path, state_dict, config=None, fmt="safetensors"):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config if config is not None else diffusers_config(TINY), f)
    if fmt == "safetensors":
        save_file(state_dict, os.path.join(path, "diffusion_pytorch_model.safetensors"))
    else:
        torch.save(state_dict, os.path.join(path, "diffusion_pytorch_model.bin"))
    return str(path)


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ----------------------------------------------------------------------------------------------
# Loading diffusers folders
# ----------------------------------------------------------------------------------------------


def test_load_diffusers_folder(tmp_path, torch_vae, state_dict):
    src = write_folder(tmp_path / "sd-vae", state_dict)
    vae, params = vae_lib.load_vae(src, chunk_size=0)
    assert vae.config.block_out_channels == TINY["block_out_channels"]
    assert all(p.dtype == np.float32 for p in jax.tree.leaves(params))
    z = latents()
    assert rel_err(vae.decode(params, jnp.asarray(z)), torch_decode(torch_vae, z / 0.18215)) <= 1e-5
    # A pipeline folder with a vae/ subfolder resolves to it.
    pipe = tmp_path / "pipeline"
    write_folder(pipe / "vae", state_dict)
    _, params2 = vae_lib.load_vae(str(pipe))
    assert_trees_equal(params, params2)


def test_bin_and_legacy_attention_names(tmp_path, state_dict):
    """.bin weights with pre-0.14 names (query/key/value/proj_attn, some as 1x1 convs)."""
    _, want = vae_lib.load_diffusers(write_folder(tmp_path / "new", state_dict))
    legacy = {}
    for k, v in state_dict.items():
        for new, old in (("to_q", "query"), ("to_k", "key"), ("to_v", "value")):
            k = k.replace(f".{new}.", f".{old}.")
        k = k.replace(".to_out.0.", ".proj_attn.")
        if k.endswith("proj_attn.weight"):
            v = v[:, :, None, None]  # (C, C, 1, 1) as in single-file LDM checkpoints
        legacy[k] = v
    assert any(".query." in k for k in legacy)
    _, got = vae_lib.load_diffusers(write_folder(tmp_path / "old", legacy, fmt="bin"))
    assert_trees_equal(got, want)


def test_state_dict_round_trip(state_dict):
    params = vae_lib.params_from_state_dict(state_dict, diffusers_config(TINY))
    back = vae_lib.state_dict_from_params(params)
    assert set(back) == set(state_dict)
    for k, v in state_dict.items():
        np.testing.assert_array_equal(back[k], v.numpy(), err_msg=k)


def test_save_diffusers_loads_in_diffusers(tmp_path, state_dict):
    params = vae_lib.params_from_state_dict(state_dict, diffusers_config(TINY))
    out = convert_vae.save_diffusers(str(tmp_path / "export"), diffusers_config(TINY), params)
    model = AutoencoderKL.from_pretrained(out, local_files_only=True)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), state_dict[k].numpy(), err_msg=k)


# ----------------------------------------------------------------------------------------------
# Strictness
# ----------------------------------------------------------------------------------------------


def _missing(sd, cfg):
    sd = dict(sd)
    del sd["decoder.conv_out.bias"]
    return sd, cfg, ["decoder.conv_out.bias", "missing from the weights (1)"]


def _extra(sd, cfg):
    return (
        {**sd, "encoder.extra_layer.weight": torch.zeros(3)},
        cfg,
        ["encoder.extra_layer.weight", "unexpected (not used by the config) (1)"],
    )


def _wrong_shape(sd, cfg):
    sd = dict(sd)
    sd["decoder.mid_block.attentions.0.to_k.weight"] = torch.zeros(64, 32)
    return sd, cfg, ["decoder.mid_block.attentions.0.to_k.weight: weights (64, 32), config expects"]


def _config_layers(sd, cfg):
    # The config says 2 resnets per block, the weights have 1.
    return (
        sd,
        {**cfg, "layers_per_block": 2},
        ["encoder.down_blocks.0.resnets.1.conv1.weight", "'layers_per_block': 1"],
    )


def _config_latents(sd, cfg):
    return sd, {**cfg, "latent_channels": 8}, ["shape mismatches", "'latent_channels': 4"]


@pytest.mark.parametrize(
    "corrupt", [_missing, _extra, _wrong_shape, _config_layers, _config_latents]
)
def test_conversion_is_strict_and_writes_nothing(tmp_path, state_dict, corrupt, capsys):
    sd, cfg, fragments = corrupt(state_dict, diffusers_config(TINY))
    src = write_folder(tmp_path / "src", sd, cfg)
    dst = tmp_path / "out" / "vae"
    with pytest.raises(vae_lib.VAEWeightsError) as err:
        convert_vae.convert(src, str(dst))
    msg = str(err.value)
    assert "do not match the config" in msg and src in msg
    for frag in fragments:
        assert frag in msg
    assert not dst.exists()
    assert not (tmp_path / "out").exists() or os.listdir(tmp_path / "out") == []
    # The same through the CLI: exit code 2, message on stderr, still nothing written.
    assert convert_vae.main(["--src", src, "--dst", str(dst)]) == 2
    assert fragments[0] in capsys.readouterr().err
    assert not dst.exists()
    # And load_vae refuses too.
    with pytest.raises(vae_lib.VAEWeightsError):
        vae_lib.load_vae(src)


def test_unsupported_config_is_a_clear_error(tmp_path, state_dict):
    cfg = {**diffusers_config(TINY), "down_block_types": ["AttnDownEncoderBlock2D"] * 2}
    src = write_folder(tmp_path / "src", state_dict, cfg)
    with pytest.raises(ValueError, match="down_block_types"):
        convert_vae.convert(src, str(tmp_path / "dst"))
    assert not (tmp_path / "dst").exists()


# ----------------------------------------------------------------------------------------------
# Orbax + CLI
# ----------------------------------------------------------------------------------------------


def test_orbax_round_trip_and_cli(tmp_path, state_dict):
    src = write_folder(tmp_path / "src", state_dict)
    _, want = vae_lib.load_diffusers(src)

    dst = str(tmp_path / "flax")
    assert convert_vae.main(["--src", src, "--dst", dst]) == 0
    assert sorted(os.listdir(dst)) == ["config.json", "params"]
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []  # no temp dirs left
    vae, params = vae_lib.load_vae(dst)
    assert vae.config == vae_lib.VAEConfig.from_dict(diffusers_config(TINY))
    assert_trees_equal(params, want)

    # An existing destination is refused (and left alone) unless forced.
    before = os.stat(os.path.join(dst, "config.json")).st_mtime_ns
    with pytest.raises(FileExistsError, match="--force"):
        convert_vae.convert(src, dst)
    assert convert_vae.main(["--src", src, "--dst", dst]) == 2
    assert os.stat(os.path.join(dst, "config.json")).st_mtime_ns == before
    convert_vae.convert(src, dst, force=True)
    assert_trees_equal(vae_lib.load_vae(dst)[1], want)

    # The project CLI discovers the subcommand; register(subparsers) serves any other CLI.
    from nag_jax.convert.__main__ import discover, main

    assert discover()["vae"] is convert_vae
    assert main(["vae", src, str(tmp_path / "c")]) == 0  # positional, as in to-orbax
    assert_trees_equal(vae_lib.load_vae(str(tmp_path / "c"))[1], want)
    parser = argparse.ArgumentParser()
    convert_vae.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["vae", "--src", src, "--dst", str(tmp_path / "b"), "--force"])
    assert args.func(args) == 0 and os.path.isdir(tmp_path / "b" / "params")

    # An Orbax dir whose config.json does not match its params is refused clearly.
    with open(os.path.join(dst, "config.json")) as f:
        cfg = json.load(f)
    cfg["layers_per_block"] = 2
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(cfg, f)
    with pytest.raises(vae_lib.VAEWeightsError, match="do not match its config.json"):
        vae_lib.load_vae(dst)


# ----------------------------------------------------------------------------------------------
# Missing files
# ----------------------------------------------------------------------------------------------


def test_missing_files_errors(tmp_path):
    nowhere = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError) as err:
        vae_lib.load_vae(nowhere)
    for frag in (nowhere, "config.json", "diffusion_pytorch_model.safetensors", "sd-vae-ft-ema"):
        assert frag in str(err.value)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="No config.json") as err:
        vae_lib.load_vae(str(empty))
    assert "stabilityai/sd-vae-ft-ema" in str(err.value)

    with open(empty / "config.json", "w") as f:
        json.dump(diffusers_config(TINY), f)
    with pytest.raises(FileNotFoundError, match="No VAE weights") as err:
        vae_lib.load_vae(str(empty))
    assert "diffusion_pytorch_model.bin" in str(err.value) and str(empty) in str(err.value)
