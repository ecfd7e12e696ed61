"""Converter tests: key table, inference, round trips, bad input (clear errors, nothing written).

Expected values come from the PyTorch reference (tests/torch_reference.py, written from the
releases' facts) and from the Flax model's own init (jax.eval_shape), never from the converter.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys

import jax
import numpy as np
import pytest
import torch
import torch_reference as R
from flax import traverse_util

from nag_jax import convert as C
from nag_jax.convert import common
from nag_jax.convert import to_orbax as T
from nag_jax.convert.__main__ import main as cli
from nag_jax.convert.cli import parse_args
from nag_jax.storage import weights

TINY = dict(input_size=8, hidden_size=32, depth=2, num_heads=4, num_classes=10)


def tiny(family="SiT", seed=0, null_token=False, **kw):
    cfg = dict(TINY, **kw)
    m = R.create(f"{family}-S/2", null_noise_token=null_token, **cfg)
    return R.rerandomize(m, seed)


def save(obj, path):
    torch.save(obj, path)
    return str(path)


def listing(d):
    return sorted(os.listdir(d))


# ---------------------------------------------------------------------------------------------
# Key table and inference


def test_sit_xl2_state_dict_has_release_count_and_infers_xl():
    with torch.device("meta"):
        m = R.create("SiT-XL/2")
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert sum(int(np.prod(s)) for s in shapes.values()) == 675_129_632  # the releases' count
    arch = common.infer_architecture(shapes, "SiT")
    assert (arch.model_name, arch.num_heads, arch.input_size) == ("SiT-XL/2", 16, 32)
    assert arch.learn_sigma and arch.num_classes == 1000 and arch.in_channels == 4


def test_dit_xl2_512_input_size_from_pos_embed():
    with torch.device("meta"):
        m = R.create("DiT-XL/2", input_size=64)
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert shapes["pos_embed"] == (1, 1024, 1152)
    arch = common.infer_architecture(shapes, "DiT")
    assert (arch.model_name, arch.input_size) == ("DiT-XL/2", 64)
    common.check_model_name(arch, "DiT-XL/2")
    with pytest.raises(common.ConversionError, match="family SiT vs --family DiT"):
        common.check_model_name(arch, "SiT-XL/2")


@pytest.mark.parametrize("family,null_token", [("SiT", False), ("DiT", True)])
def test_converted_tree_equals_flax_init_tree(family, null_token):
    """Every Flax param filled, nothing extra, with the shapes the Flax model creates itself."""
    sd = tiny(family, null_token=null_token).state_dict()
    params, arch, _ = T.state_dict_to_params(dict(sd), family, num_heads=4)
    model = C.create_model_from_metadata(arch.metadata())
    x, t, y = np.zeros((1, 8, 8, 4), np.float32), np.zeros((1,), np.float32), np.zeros((1,), int)
    want = jax.eval_shape(model.init, jax.random.key(0), x, t, y)["params"]
    want = {k: v.shape for k, v in traverse_util.flatten_dict(want).items()}
    got = {k: v.shape for k, v in traverse_util.flatten_dict(params).items()}
    assert got == want
    # Layout spot checks against the torch tensors (Dense kernel = weight.T, conv OIHW -> HWIO).
    np.testing.assert_array_equal(
        params["blocks_1"]["adaLN_modulation_1"]["kernel"],
        sd["blocks.1.adaLN_modulation.1.weight"].numpy().T,
    )
    np.testing.assert_array_equal(
        params["x_embedder"]["proj"]["kernel"][1, 0, 2, 5], sd["x_embedder.proj.weight"][5, 2, 1, 0]
    )


# ---------------------------------------------------------------------------------------------
# Round trips


@pytest.mark.parametrize(
    "family,ext,null_token", [("SiT", ".pt", False), ("DiT", ".safetensors", True)]
)
def test_torch_orbax_torch_is_bit_exact(tmp_path, family, ext, null_token):
    m = tiny(family, seed=3, null_token=null_token)
    sd = {k: v.contiguous() for k, v in m.state_dict().items()}
    if ext == ".pt":
        src = save(sd, tmp_path / "src.pt")
    else:
        from safetensors.torch import save_file

        src = str(tmp_path / "src.safetensors")
        save_file(sd, src)
    meta = T.convert(src, str(tmp_path / "ckpt"), family, num_heads=4)
    assert meta["null_noise"] == ("learned" if null_token else None)
    with open(src, "rb") as f:
        assert meta["sha256"] == hashlib.sha256(f.read()).hexdigest()
    assert meta["family"] == family
    out = str(tmp_path / f"back{ext}")
    assert cli(["to-torch", str(tmp_path / "ckpt"), out]) == 0
    if ext == ".pt":
        back = torch.load(out, weights_only=True)
    else:
        from safetensors.torch import load_file

        back = load_file(out)
    if ext == ".pt":
        assert list(back) == list(sd)  # the releases' order, pos_embed first
    assert sorted(back) == sorted(sd)
    for k in sd:
        assert back[k].dtype == sd[k].dtype and torch.equal(back[k], sd[k]), k
    # And the file loads strictly into the reference model.
    m2 = R.create(f"{family}-S/2", null_noise_token=null_token, **TINY)
    m2.load_state_dict(back, strict=True)


def test_legacy_non_zip_file_is_read_without_mmap(tmp_path):
    sd = tiny("SiT", seed=4).state_dict()
    src = str(tmp_path / "legacy.pt")
    torch.save(sd, src, _use_new_zipfile_serialization=False)
    params, meta = C.load_torch_checkpoint(src, "SiT", num_heads=4)
    np.testing.assert_array_equal(
        params["final_layer"]["linear"]["kernel"], sd["final_layer.linear.weight"].numpy().T
    )


def test_key_table_inverse_is_exact():
    with torch.device("meta"):
        sd = R.create("DiT-XL/2", null_noise_token=True).state_dict()
    for k, v in sd.items():
        if k != "pos_embed":
            flax_shape = common.to_flax(k, np.empty(v.shape, np.float32)).shape
            assert common.torch_key(common.flax_path(k)) == k
            assert common.torch_shape(k, flax_shape) == tuple(v.shape)


def test_export_of_a_params_tree_without_metadata(tmp_path):
    """A training checkpoint (bare params tree) exports with --family/--input-size."""
    import orbax.checkpoint as ocp

    sd = tiny("SiT", seed=7, null_token=True).state_dict()
    params, _, _ = T.state_dict_to_params(dict(sd), "SiT", num_heads=4)
    with ocp.StandardCheckpointer() as writer:  # async: wait on the same instance
        writer.save(str(tmp_path / "bare"), params)
        writer.wait_until_finished()
    out = str(tmp_path / "back.pt")
    assert cli(["to-torch", str(tmp_path / "bare"), out]) == 2  # needs --family/--input-size
    assert not os.path.exists(out)
    args = ["--family", "SiT", "--input-size", "8", "--num-heads", "4"]
    assert cli(["to-torch", str(tmp_path / "bare"), out, *args]) == 0
    back = torch.load(out, weights_only=True)
    assert sorted(back) == sorted(sd) and all(torch.equal(back[k], sd[k]) for k in sd)


def test_train_dict_uses_ema_by_default_and_model_on_request(tmp_path):
    ema, raw = tiny("DiT", seed=1), tiny("DiT", seed=2)
    ns = argparse.Namespace(model="DiT-XL/2", global_batch_size=256)
    src = save(
        {"model": raw.state_dict(), "ema": ema.state_dict(), "opt": {}, "args": ns},
        tmp_path / "0400000.pt",
    )
    p_ema, meta = C.load_torch_checkpoint(src, "DiT", num_heads=4)
    p_raw, meta_raw = C.load_torch_checkpoint(src, "DiT", num_heads=4, weights="model")
    assert meta["weights"] == "ema" and meta_raw["weights"] == "model"
    assert meta["train_args"]["global_batch_size"] == 256
    np.testing.assert_array_equal(
        p_ema["t_embedder"]["mlp_0"]["bias"], ema.t_embedder.mlp[0].bias.detach().numpy()
    )
    np.testing.assert_array_equal(
        p_raw["t_embedder"]["mlp_0"]["bias"], raw.t_embedder.mlp[0].bias.detach().numpy()
    )


def test_cli_to_orbax_and_inspect(tmp_path, capsys):
    src = save(tiny("SiT").state_dict(), tmp_path / "a.pt")
    dest = str(tmp_path / "ckpt")
    assert cli(["to-orbax", src, dest, "--family", "SiT", "--num-heads", "4"]) == 0
    params, meta = weights.load_params(dest)
    assert meta["model"] == "SiT-S/2" and meta["input_size"] == 8 and meta["num_classes"] == 10
    assert isinstance(params["final_layer"]["linear"]["kernel"], np.ndarray)
    capsys.readouterr()
    assert cli(["inspect", dest]) == 0
    text = capsys.readouterr().out
    n_expected = sum(v.numel() for k, v in tiny("SiT").state_dict().items() if k != "pos_embed")
    assert f"{n_expected:,} numbers" in text and "blocks_1/mlp/fc2/kernel" in text
    assert cli(["inspect", src]) == 0
    assert "pos_embed" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# Bad input: clear errors, nothing written


def _convert_fails(tmp_path, src, match, **kw):
    dest = tmp_path / "out_ckpt"
    before = listing(tmp_path)
    with pytest.raises(common.ConversionError, match=match):
        T.convert(str(src), str(dest), kw.pop("family", "SiT"), **kw)
    assert not dest.exists()
    assert listing(tmp_path) == before  # no temporary leftovers


def test_truncated_file(tmp_path):
    src = save(tiny().state_dict(), tmp_path / "a.pt")
    data = (tmp_path / "a.pt").read_bytes()
    with open(src, "wb") as f:
        f.write(data[: len(data) // 2])
    _convert_fails(tmp_path, src, "could not read .* PyTorch checkpoint.*truncated", num_heads=4)


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "notes.pt").write_text("hello, not a checkpoint\n")
    _convert_fails(tmp_path, tmp_path / "notes.pt", "could not read", num_heads=4)
    (tmp_path / "x.safetensors").write_bytes(b"\x00" * 5)
    _convert_fails(tmp_path, tmp_path / "x.safetensors", "could not read .* safetensors")


class Evil:  # a pickled class instance: weights_only must refuse it, never run it
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickled_code_is_refused(tmp_path):
    src = save({"model": Evil()}, tmp_path / "evil.pt")
    _convert_fails(tmp_path, src, "weights_only=True refuses")


def test_state_dict_of_another_architecture(tmp_path):
    vit = {"patch_embed.proj.weight": torch.zeros(8, 3, 4, 4), "head.weight": torch.zeros(10, 8)}
    _convert_fails(tmp_path, save(vit, tmp_path / "vit.pt"), "missing .*x_embedder.proj.weight")


def test_missing_unexpected_and_misshaped_keys_are_named(tmp_path):
    sd = dict(tiny().state_dict())
    del sd["blocks.1.mlp.fc2.bias"]
    sd["blocks.0.attn.qkv.bias"] = torch.zeros(7)
    sd["extra.head"] = torch.zeros(3)
    with pytest.raises(common.ConversionError) as e:
        T.state_dict_to_params(sd, "SiT", num_heads=4)
    msg = str(e.value)
    assert "missing keys (1): ['blocks.1.mlp.fc2.bias']" in msg
    assert "unexpected keys (1): ['extra.head']" in msg
    assert "blocks.0.attn.qkv.bias: got (7,), expected (96,)" in msg


def test_dit_file_with_mismatched_model(tmp_path):
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in R.create("DiT-B/4").state_dict().items()}
    arch = common.infer_architecture(shapes, "DiT")
    assert arch.model_name == "DiT-B/4"
    with pytest.raises(common.ConversionError, match=r"--model DiT-XL/2 does not match.*DiT-B/4"):
        common.check_model_name(arch, "DiT-XL/2")
    src = save(tiny("DiT").state_dict(), tmp_path / "d.pt")
    _convert_fails(
        tmp_path,
        src,
        "does not match.*hidden size 384 vs 32",
        family="DiT",
        model="DiT-S/2",
        num_heads=4,
    )


def test_custom_width_needs_num_heads(tmp_path):
    src = save(tiny().state_dict(), tmp_path / "a.pt")
    _convert_fails(tmp_path, src, "pass --num-heads")


def test_pos_embed_mismatch_is_an_error(tmp_path):
    sd = dict(tiny().state_dict())
    sd["pos_embed"] = sd["pos_embed"] + 1e-3
    _convert_fails(tmp_path, save(sd, tmp_path / "a.pt"), "pos_embed differs", num_heads=4)


def test_learned_null_token_requested_but_absent(tmp_path):
    src = save(tiny().state_dict(), tmp_path / "a.pt")
    _convert_fails(
        tmp_path, src, "does not invent one.*fine-tuning", num_heads=4, null_noise="learned"
    )


def test_existing_destination_refused_and_force_keeps_old_until_new_complete(tmp_path, monkeypatch):
    src = save(tiny(seed=0).state_dict(), tmp_path / "a.pt")
    dest = str(tmp_path / "ckpt")
    T.convert(src, dest, "SiT", num_heads=4)
    old = weights.load_params(dest)[0]
    src2 = save(tiny(seed=5).state_dict(), tmp_path / "b.pt")
    with pytest.raises(common.ConversionError, match="already exists; pass --force"):
        T.convert(src2, dest, "SiT", num_heads=4)
    assert cli(["to-orbax", src2, dest, "--family", "SiT", "--num-heads", "4"]) == 2
    # A failing write with --force leaves the old checkpoint intact and no temporaries.
    import orbax.checkpoint as ocp

    def boom(*a, **k):
        raise OSError("disk full (simulated)")

    before = listing(tmp_path)
    monkeypatch.setattr(ocp.Checkpointer, "save", boom)
    with pytest.raises(OSError, match="simulated"):
        T.convert(src2, dest, "SiT", num_heads=4, force=True)
    monkeypatch.undo()
    assert listing(tmp_path) == before
    np.testing.assert_array_equal(
        weights.load_params(dest)[0]["y_embedder"]["embedding_table"]["embedding"],
        old["y_embedder"]["embedding_table"]["embedding"],
    )
    # A successful --force replaces it.
    T.convert(src2, dest, "SiT", num_heads=4, force=True)
    new = weights.load_params(dest)[0]["y_embedder"]["embedding_table"]["embedding"]
    assert not np.array_equal(new, old["y_embedder"]["embedding_table"]["embedding"])
    assert listing(tmp_path) == before


def test_export_refuses_existing_file(tmp_path):
    src = save(tiny().state_dict(), tmp_path / "a.pt")
    T.convert(src, str(tmp_path / "ckpt"), "SiT", num_heads=4)
    with pytest.raises(common.ConversionError, match="already exists"):
        C.export_torch(str(tmp_path / "ckpt"), src)
    assert torch.load(src, weights_only=True).keys()  # untouched
    with pytest.raises(common.ConversionError, match="not a converted checkpoint"):
        weights.load_params(str(tmp_path))


# ---------------------------------------------------------------------------------------------
# The CLI: one argument style; a missing file or package is said first, in one line


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.fixture
def converted(tmp_path):
    """A converted tiny SiT (through the CLI, --src/--dst style) and its source state dict."""
    sd = {k: v.contiguous() for k, v in tiny("SiT", seed=5).state_dict().items()}
    src, ckpt = save(sd, tmp_path / "src.pt"), str(tmp_path / "ckpt")
    assert (
        cli(["to-orbax", "--src", src, "--dst", ckpt, "--family", "SiT", "--num-heads", "4"]) == 0
    )
    return ckpt, sd


def test_a_missing_source_is_named_before_any_package_is_needed(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ModuleNotFoundError
    missing = str(tmp_path / "nope.pt")
    for argv in (["inspect", missing], ["to-orbax", missing, str(tmp_path / "out")]):
        assert cli(argv) == 2
        line = one_error_line(capsys)
        assert line == f"error: source {missing} does not exist; check the path.", line
    assert not (tmp_path / "out").exists()


def test_to_torch_pt_without_torch_stops_before_reading(converted, tmp_path, monkeypatch, capsys):
    ckpt, _ = converted
    reads = []
    monkeypatch.setattr(weights, "load_params", lambda *a, **k: reads.append(a))
    monkeypatch.setitem(sys.modules, "torch", None)
    assert cli(["to-torch", ckpt, str(tmp_path / "back.pt")]) == 2
    line = one_error_line(capsys)
    assert line.startswith("error: nag-convert to-torch needs torch") and "whl/cpu" in line
    assert reads == [] and not (tmp_path / "back.pt").exists()
    assert cli(["to-torch", ckpt, str(tmp_path / "back.npz")]) == 2  # bad suffix: also at once
    assert "expected a .pt, .pth or .safetensors name" in one_error_line(capsys) and reads == []


def test_to_torch_safetensors_needs_no_torch_and_matches_the_torch_writer(
    converted, tmp_path, monkeypatch
):
    from safetensors.torch import load_file, save_file

    ckpt, sd = converted
    out = tmp_path / "back.safetensors"
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "torch", None)
        assert cli(["to-torch", "--src", ckpt, "--dst", str(out)]) == 0
    back = load_file(str(out))
    assert sorted(back) == sorted(sd)
    for k in sd:
        assert back[k].dtype == sd[k].dtype and torch.equal(back[k], sd[k]), k
    ref = tmp_path / "ref.safetensors"
    save_file(sd, str(ref))  # safetensors' torch writer, on the source tensors
    assert out.read_bytes() == ref.read_bytes()


@pytest.mark.parametrize("command", ["to-orbax", "to-torch", "vae", "inception", "inspect"])
def test_every_command_takes_src_dst_as_options_or_positionals(command, capsys):
    writes = command != "inspect"
    as_options = parse_args([command, "--src", "A"] + (["--dst", "B"] if writes else []))
    positional = parse_args([command, "A"] + (["B"] if writes else []))
    want = ("A", "B") if writes else ("A", None)
    for args in (as_options, positional):
        assert (args.src, getattr(args, "dst", None)) == want
    if writes:
        mixed = parse_args([command, "--src", "A", "B"])  # the positional fills --dst
        assert (mixed.src, mixed.dst) == ("A", "B")
    with pytest.raises(SystemExit) as e:
        parse_args([command])
    assert e.value.code == 2
    assert "the following arguments are required: --src (or SRC)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        parse_args([command, "--src", "A", "--dst", "B", "C"] if writes else [command, "A", "C"])
    assert e.value.code == 2 and "unrecognized arguments: C" in capsys.readouterr().err
