"""Weights from the Hugging Face hub and the diffusers DiT layout (offline).

The test builds a local hub cache (HF_HUB_CACHE layout: models--ORG--NAME/refs/main and
snapshots/<commit>/...) holding a tiny DiT pipeline repo: ``transformer/`` saved by diffusers'
own ``DiTTransformer2DModel.save_pretrained`` and a release-layout ``.pt`` of the same weights.
The weights start from the PyTorch release reference (tests/torch_reference.py, re-randomised:
fresh DiT weights output zeros) and are copied into the diffusers module with the mapping
diffusers' DiT conversion uses (written here, release -> diffusers; the converter maps the other
way), so expected values never come from the converter:

- the hub conversion's params equal the .pt conversion's bit for bit;
- the JAX forward of the converted model matches diffusers' own forward (relative error <= 1e-5)
  once diffusers is given the release's timestep frequencies; diffusers' DiT divides the
  frequency exponent by 127 (Timesteps(downscale_freq_shift=1)) where the release and this model
  divide by 128, and its per-block second LayerNorm uses config.norm_eps (set to the release's
  1e-6 here). The unpatched diffusers forward differs (asserted: the comparison sees t).

Time convention: DiT, integer step 0..999 (0 = least noise), fed as float; diffusers NCHW, JAX
NHWC; both output 2C channels (eps, then the variance value).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch_reference as R
from flax import traverse_util

from nag_jax.convert import create_model_from_metadata
from nag_jax.convert import hub as hub_lib
from nag_jax.convert import to_orbax as T
from nag_jax.convert.cli import main as cli
from nag_jax.convert.common import ConversionError
from nag_jax.storage import weights

diffusers = pytest.importorskip("diffusers")
huggingface_hub = pytest.importorskip("huggingface_hub")

REPO = "test-org/tiny-dit"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
ARCH = dict(input_size=8, hidden_size=32, depth=2, num_heads=4, num_classes=10)
FWD_TOL = 1e-5


def release_to_diffusers(sd: dict, depth: int) -> dict:
    """The releases' state dict -> DiTTransformer2DModel keys (what diffusers' DiT conversion
    does: the shared embedders are copied into every block; qkv split into to_q/k/v)."""
    out = {
        "pos_embed.proj.weight": sd["x_embedder.proj.weight"],
        "pos_embed.proj.bias": sd["x_embedder.proj.bias"],
        "proj_out_1.weight": sd["final_layer.adaLN_modulation.1.weight"],
        "proj_out_1.bias": sd["final_layer.adaLN_modulation.1.bias"],
        "proj_out_2.weight": sd["final_layer.linear.weight"],
        "proj_out_2.bias": sd["final_layer.linear.bias"],
    }
    for i in range(depth):
        d, b = f"transformer_blocks.{i}.", f"blocks.{i}."
        emb = d + "norm1.emb."
        for n, m in (("linear_1", "0"), ("linear_2", "2")):
            for leaf in ("weight", "bias"):
                out[f"{emb}timestep_embedder.{n}.{leaf}"] = sd[f"t_embedder.mlp.{m}.{leaf}"].clone()
        out[emb + "class_embedder.embedding_table.weight"] = sd[
            "y_embedder.embedding_table.weight"
        ].clone()
        for leaf in ("weight", "bias"):
            q, k, v = sd[f"{b}attn.qkv.{leaf}"].chunk(3, dim=0)
            out[f"{d}attn1.to_q.{leaf}"] = q
            out[f"{d}attn1.to_k.{leaf}"] = k
            out[f"{d}attn1.to_v.{leaf}"] = v
            out[f"{d}attn1.to_out.0.{leaf}"] = sd[f"{b}attn.proj.{leaf}"]
            out[f"{d}ff.net.0.proj.{leaf}"] = sd[f"{b}mlp.fc1.{leaf}"]
            out[f"{d}ff.net.2.{leaf}"] = sd[f"{b}mlp.fc2.{leaf}"]
            out[f"{d}norm1.linear.{leaf}"] = sd[f"{b}adaLN_modulation.1.{leaf}"]
    return out


def tiny_diffusers(norm_eps: float = 1e-6):
    return diffusers.DiTTransformer2DModel(
        num_attention_heads=ARCH["num_heads"],
        attention_head_dim=ARCH["hidden_size"] // ARCH["num_heads"],
        in_channels=4,
        out_channels=8,
        num_layers=ARCH["depth"],
        sample_size=ARCH["input_size"],
        patch_size=2,
        num_embeds_ada_norm=ARCH["num_classes"],
        norm_eps=norm_eps,
    ).eval()


def write_snapshot(cache: str, repo: str, commit: str) -> str:
    """Creates models--ORG--NAME/{refs/main, snapshots/<commit>/} -> the snapshot folder."""
    root = os.path.join(cache, "models--" + repo.replace("/", "--"))
    snap = os.path.join(root, "snapshots", commit)
    os.makedirs(snap, exist_ok=True)
    os.makedirs(os.path.join(root, "refs"), exist_ok=True)
    with open(os.path.join(root, "refs", "main"), "w") as f:
        f.write(commit)
    return snap


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A local hub cache with REPO (transformer/ by diffusers + DiT-tiny.pt); the models."""
    cache = str(tmp_path_factory.mktemp("hf_cache"))
    release = R.rerandomize(R.create("DiT-S/2", **ARCH), seed=3).eval()
    sd = {k: v.detach().clone() for k, v in release.state_dict().items()}
    dif = tiny_diffusers()
    dif.load_state_dict(release_to_diffusers(sd, ARCH["depth"]), strict=True)
    snap = write_snapshot(cache, REPO, COMMIT)
    dif.save_pretrained(os.path.join(snap, "transformer"), safe_serialization=True)
    with open(os.path.join(snap, "model_index.json"), "w") as f:
        json.dump(
            {"_class_name": "DiTPipeline", "transformer": ["diffusers", dif.__class__.__name__]}, f
        )
    torch.save(sd, os.path.join(snap, "DiT-tiny.pt"))
    return dict(cache=cache, snap=snap, release=release, diffusers=dif, sd=sd)


@pytest.fixture
def offline(hub, monkeypatch):
    """huggingface_hub reads ``hub``'s cache only (what HF_HUB_CACHE + HF_HUB_OFFLINE=1 do)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", hub["cache"])
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return hub


def test_cli_converts_hub_repo_offline(hub, tmp_path):
    """The user's command, in a fresh process with the environment variables."""
    dest = tmp_path / "ckpt"
    env = dict(os.environ, HF_HUB_CACHE=hub["cache"], HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-m", "nag_jax.convert", "to-orbax", f"hf://{REPO}", str(dest)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"source: {REPO}@{COMMIT} (Hugging Face cache)" in proc.stdout
    assert "model=DiT-S/2, input_size=8, in_channels=4, num_classes=10, learn_sigma=True" in (
        proc.stdout
    )
    params, meta = weights.load_params(str(dest))
    assert (meta["family"], meta["source_format"], meta["hub_revision"]) == (
        "DiT",
        "diffusers",
        COMMIT,
    )
    assert meta["source"] == f"hf://{REPO}" and meta["hub_path"] == "transformer"
    assert (meta["depth"], meta["hidden_size"], meta["num_heads"]) == (2, 32, 4)


def test_hub_params_equal_release_pt_params(offline):
    from_hub, meta = T.load_torch_checkpoint(f"hf://{REPO}")
    from_pt, _ = T.load_torch_checkpoint(f"hf://{REPO}/DiT-tiny.pt", "DiT", num_heads=4)
    a, b = traverse_util.flatten_dict(from_hub), traverse_util.flatten_dict(from_pt)
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=str(k))
    # the revision pinned in the URI, and a folder given explicitly, read the same files
    again, meta2 = T.load_torch_checkpoint(f"hf://{REPO}@{COMMIT}/transformer")
    np.testing.assert_array_equal(
        again["blocks_1"]["attn"]["qkv"]["kernel"], a[("blocks_1", "attn", "qkv", "kernel")]
    )
    assert meta2["hub_revision"] == COMMIT and meta["sha256"] == meta2["sha256"]


def relerr(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def test_forward_matches_diffusers(offline):
    params, meta = T.load_torch_checkpoint(f"hf://{REPO}")
    model = create_model_from_metadata(meta)
    dif = offline["diffusers"]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 4, 8, 8, generator=g)
    t = torch.tensor([0, 17, 500, 999])
    y = torch.tensor([0, 3, 9, 10])  # 10 = the null class row

    def diffusers_forward(shift: int):
        for block in dif.transformer_blocks:
            block.norm1.emb.time_proj.downscale_freq_shift = shift
        with torch.no_grad():
            return dif(x, timestep=t, class_labels=y).sample.numpy()

    ours = model.apply(
        {"params": params},
        jnp.asarray(x.numpy().transpose(0, 2, 3, 1)),
        jnp.asarray(t.numpy(), jnp.float32),
        jnp.asarray(y.numpy()),
    )
    ours = np.asarray(ours).transpose(0, 3, 1, 2)
    assert ours.shape == (4, 8, 8, 8)
    release_freqs = diffusers_forward(0)
    assert np.abs(release_freqs).max() > 0.1  # re-randomised: not the zero output of a fresh init
    assert relerr(ours, release_freqs) <= FWD_TOL
    with torch.no_grad():  # the release reference agrees with both
        assert relerr(offline["release"](x, t.float(), y).numpy(), release_freqs) <= FWD_TOL
    # diffusers' own frequencies (exponent / 127) give other outputs: the comparison sees t.
    assert relerr(ours, diffusers_forward(1)) > 100 * FWD_TOL
    diffusers_forward(1)  # leave the module as diffusers built it


def test_diffusers_folder_on_disk_and_its_pipeline_root(offline):
    """A local folder (no hub) works: the transformer/ folder or the pipeline root above it."""
    a, meta = T.load_torch_checkpoint(offline["snap"])
    b, _ = T.load_torch_checkpoint(os.path.join(offline["snap"], "transformer"))
    assert meta["source_format"] == "diffusers" and "hub" not in meta
    np.testing.assert_array_equal(
        a["final_layer"]["linear"]["kernel"], b["final_layer"]["linear"]["kernel"]
    )


def test_hub_errors_are_one_clear_line(offline, tmp_path):
    with pytest.raises(ConversionError, match="not in the local hub cache"):
        T.load_torch_checkpoint("hf://test-org/absent")
    with pytest.raises(ConversionError, match="has no file nope.pt; it is not in the local hub"):
        T.load_torch_checkpoint(f"hf://{REPO}/nope.pt", "DiT")
    with pytest.raises(ConversionError, match=r"expected hf://ORG/NAME\[@REVISION\]"):
        T.load_torch_checkpoint("hf://no-namespace")
    with pytest.raises(ConversionError, match="pass --family DiT or --family SiT"):
        T.load_torch_checkpoint(f"hf://{REPO}/DiT-tiny.pt")
    with pytest.raises(ConversionError, match="folder without config.json"):
        T.load_torch_checkpoint(str(tmp_path))


def _diffusers_copy(hub, tmp_path, edit_config=None, edit_sd=None) -> str:
    folder = tmp_path / "transformer"
    folder.mkdir()
    src = os.path.join(hub["snap"], "transformer")
    with open(os.path.join(src, "config.json")) as f:
        cfg = json.load(f)
    if edit_config:
        edit_config(cfg)
    (folder / "config.json").write_text(json.dumps(cfg))
    sd = {k: v.clone() for k, v in hub["diffusers"].state_dict().items()}
    if edit_sd:
        edit_sd(sd)
    torch.save(sd, folder / "diffusion_pytorch_model.bin")  # the older .bin layout
    return str(folder)


def test_bin_weights_are_read(hub, tmp_path):
    ok, _ = T.load_torch_checkpoint(_diffusers_copy(hub, tmp_path))
    ref, _ = T.load_torch_checkpoint(os.path.join(hub["snap"], "DiT-tiny.pt"), "DiT", num_heads=4)
    np.testing.assert_array_equal(
        ok["t_embedder"]["mlp_0"]["kernel"], ref["t_embedder"]["mlp_0"]["kernel"]
    )


def test_other_norm_type_is_refused(hub, tmp_path):
    folder = _diffusers_copy(hub, tmp_path, edit_config=lambda c: c.update(norm_type="ada_norm"))
    with pytest.raises(ConversionError, match="norm_type.*ada_norm_zero"):
        T.load_torch_checkpoint(folder)


def test_diverged_per_block_embedders_are_refused(hub, tmp_path):
    key = "transformer_blocks.1.norm1.emb.timestep_embedder.linear_2.bias"
    folder = _diffusers_copy(hub, tmp_path, edit_sd=lambda sd: sd[key].add_(1e-3))
    with pytest.raises(ConversionError, match=f"{key} differs from block 0"):
        T.load_torch_checkpoint(folder)


def test_missing_extra_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(ConversionError, match=r"pip install 'nag_jax\[convert\]'"):
        T.load_torch_checkpoint(f"hf://{REPO}")


def test_nag_on_a_release_without_token_warns_in_one_line(offline, caplog):
    """A hub release has no null noise token: building a NAG sampler for it says so loudly."""
    import importlib.util

    from nag_jax.sampling import build
    from nag_jax.sampling.build import reconcile_model_config

    params, meta = T.load_torch_checkpoint(f"hf://{REPO}")
    path = os.path.join(os.path.dirname(__file__), "..", "configs", "sample_dit_xl.py")
    spec = importlib.util.spec_from_file_location("cfg", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    config = mod.get_config()
    config.sample.nag_scale = 0.0
    reconcile_model_config(config, meta, params)  # no token -> model.null_noise = "zero"
    model = build.build_model(config.model)
    caplog.set_level("WARNING")
    build.build_sampler(config, model)
    assert not [r for r in caplog.records if "null noise token" in r.getMessage()]
    config.sample.nag_scale = 1.5
    build.build_sampler(config, model)
    msgs = [r.getMessage() for r in caplog.records if "null noise token" in r.getMessage()]
    assert len(msgs) == 1 and "\n" not in msgs[0] and "nag_scale=1.5" in msgs[0]


def test_unreachable_hub_is_not_reported_as_a_missing_model(hub, monkeypatch):
    """Online, a failed request with no cached copy raises LocalEntryNotFoundError: that is a
    network problem, said as such (not "no diffusers model")."""
    from huggingface_hub import constants, errors

    def unreachable(*args, **kwargs):
        raise errors.LocalEntryNotFoundError("Name or service not known")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_lib, "hub_unreachable", lambda *a, **k: None)  # the probe connects
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", unreachable)
    with pytest.raises(ConversionError, match="could not reach the Hugging Face hub"):
        T.load_torch_checkpoint("hf://facebook/DiT-XL-2-256")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once closed


@pytest.fixture
def no_hub(monkeypatch):
    """A hub endpoint that refuses connections, HF_HUB_OFFLINE unset, no proxy: a machine with
    no network as huggingface_hub sees it (it would retry with backoff for ~25 s)."""
    from huggingface_hub import constants

    endpoint = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(k, raising=False)
    return endpoint


def test_hub_probe_tells_a_listening_endpoint_from_a_dead_one():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert hub_lib.hub_unreachable(f"http://127.0.0.1:{server.getsockname()[1]}") is None
    reason = hub_lib.hub_unreachable(f"http://127.0.0.1:{_closed_port()}")
    assert reason is not None and reason.startswith("ConnectionRefusedError")


def test_unreachable_hub_fails_fast_in_one_line(no_hub, tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    start = time.monotonic()
    rc = cli(["to-orbax", f"hf://{REPO}", str(tmp_path / "out")])
    elapsed = time.monotonic() - start
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert f"could not reach the Hugging Face hub at {no_hub} (ConnectionRefusedError" in err[0]
    assert "not in the local hub cache" in err[0] and "HF_HUB_OFFLINE=1" in err[0]
    assert f"hf download {REPO}" in err[0]
    assert elapsed < 5.0, elapsed  # was ~25 s of huggingface_hub retries
    assert not (tmp_path / "out").exists()


def test_unreachable_hub_reads_the_cache_without_hf_hub_offline(hub, no_hub, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", hub["cache"])
    params, meta = T.load_torch_checkpoint(f"hf://{REPO}")
    ref, _ = T.load_torch_checkpoint(os.path.join(hub["snap"], "DiT-tiny.pt"), "DiT", num_heads=4)
    assert (meta["hub_revision"], meta["source_format"]) == (COMMIT, "diffusers")
    np.testing.assert_array_equal(
        params["final_layer"]["linear"]["kernel"], ref["final_layer"]["linear"]["kernel"]
    )
