"""The accelerator check's smoke run (every part, tiny sizes, CPU) and its shared timing helpers.

The smoke run is the CI guard that keeps ``benchmarks/accelerator_check.py`` runnable before a GPU
is lent: it must write a JSON with every part, each with rows whose fields are sane numbers.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import timing  # noqa: E402
from benchmarks.accelerator_check import PARTS, Budget, rel_err  # noqa: E402
from nag_jax import parallel  # noqa: E402
from nag_jax.config.schema import base_config  # noqa: E402
from nag_jax.models import create_model  # noqa: E402


def _pos(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("accelerator_check")
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "OUT")}
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "accelerator_check.py"), "--smoke"]
        + ["--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(out / "accelerator_check.json") as f:
        return json.load(f), out


def test_smoke_writes_every_part_without_errors(smoke):
    data, out = smoke
    assert data["mode"] == "smoke" and data["device"] == "1 x cpu"
    assert list(data["parts"]) == list(PARTS)
    for name, rec in data["parts"].items():
        assert rec["errors"] == [], (name, rec["errors"])
        assert rec["status"] in ("ok", "partial"), (name, rec["status"])
        assert rec["rows"], name
        assert _pos(rec["wall_s"]), name
        for skip in rec["skipped"]:  # only the GPU-only items may be skipped on a CPU
            assert "CUDA" in skip["reason"] or "nvidia-smi" in skip["reason"], skip
    assert (out / "accelerator_check.log").stat().st_size > 0
    assert _pos(data["total_wall_s"])


def test_smoke_rows_have_sane_fields(smoke):
    data, _ = smoke
    parts = data["parts"]
    env = {r["item"]: r for r in parts["environment"]["rows"]}
    assert env["devices"]["backend"] == "cpu" and env["devices"]["versions"]["jax"]
    assert _pos(env["bf16_matmul_ceiling"]["tflops"]) and _pos(env["copy_bandwidth"]["tb_per_s"])

    num = {r["item"]: r for r in parts["numerics"]["rows"]}
    for name in ("SiT-S/2", "DiT-S/2"):
        row = num[f"f32_forward_accelerator_vs_cpu {name}"]
        assert _pos(row["out_norm"])
        for prec in data["sizes"]["numerics"]["precisions"]:
            # The "accelerator" is this CPU: the value says nothing here, only that it is a number
            # (rel_err itself is checked against a hand computation below).
            err = row[f"rel_err_{prec}_precision"]
            assert isinstance(err, float) and math.isfinite(err) and err >= 0.0
    bf16 = num["bf16_vs_f32 SiT-S/2"]
    assert 1e-5 < bf16["forward_rel_err"] < 0.1  # bf16 has 8 mantissa bits: ~1e-3..1e-2
    assert bf16["sample_finite"] and bf16["sample_rel_err"] < 0.1

    rows = parts["sampler"]["rows"]
    kinds = {(r["mode"], r.get("branches")) for r in rows}
    assert {("fused", 1), ("fused", 2), ("fused", 3), ("per_branch", 2), ("per_branch", 3)} <= kinds
    assert ("forward", None) in {(r["mode"], r.get("branches")) for r in rows}
    (rng,) = [r for r in rows if r["mode"] == "rng"]
    assert _pos(rng["per_image_over_one_key"]) and _pos(rng["injected_zeros_ms"])
    for r in rows:
        if r["mode"] == "rng":
            continue
        assert _pos(r["median_s"]) and _pos(r["compile_s"]) and _pos(r["images_per_s"])
        if r["mode"] != "forward":
            assert _pos(r["sde250_images_per_s"]) and r["mfu"] is None  # no peak for a CPU
            # SDE-250 rate is the per-step time extrapolated: batch / (median / steps * 250)
            expect = r["batch"] / (r["median_s"] / r["steps_timed"] * 250)
            assert math.isclose(r["sde250_images_per_s"], expect, rel_tol=0.02)

    train = parts["train"]["rows"]
    assert {(r["remat"], r["scan_blocks"]) for r in train} == {(0, 0), (1, 0), (0, 1)}
    for r in train:
        assert r["loss_finite"] and _pos(r["steps_per_s"]) and _pos(r["compile_s"])
        mem = r["memory_analysis"]
        assert mem is None or mem["peak_estimate_bytes"] > 0

    (ddpm,) = parts["ddpm"]["rows"]
    assert _pos(ddpm["ddpm250_images_per_s"]) and ddpm["branches"] == 3
    vae = {r["dtype"]: r for r in parts["vae"]["rows"]}
    assert set(vae) == {"bfloat16", "float32"}
    assert all(_pos(r["decode_images_per_s"]) for r in vae.values())
    assert data["summary"]["ddpm250_images_per_s"] == ddpm["ddpm250_images_per_s"]


def test_rel_err_is_the_relative_frobenius_error():
    # ||[3, 4] - [0, 5]|| / ||[0, 5]|| = ||[3, -1]|| / 5 = sqrt(10) / 5, by hand
    assert rel_err([3.0, 4.0], [0.0, 5.0]) == pytest.approx(math.sqrt(10) / 5, rel=1e-15)
    # over all elements of a matrix: a - b = [[1, 0], [0, 0]], norm 1; ||b|| = 2
    assert rel_err([[1.0, 2.0], [0.0, 0.0]], [[0.0, 2.0], [0.0, 0.0]]) == pytest.approx(0.5)


def test_budget_reserves_later_parts_and_names_the_reason():
    budget = Budget(100.0, {"a": 10, "b": 30, "c": 20}, ["a", "b", "c"])
    budget.start("a")
    assert budget.part_end == 50.0  # 100 - (30 + 20): b and c keep their budgets
    assert budget.skip_reason(1.0) is None
    reason = budget.skip_reason(60.0)
    assert reason is not None and "part 'a' must end by 50s" in reason
    budget.start("c")
    assert budget.part_end == 100.0


def test_analytic_flops_match_the_dit_paper_and_xla():
    # DiT-XL/2: 118.6 GFLOPs (multiply-adds) in the DiT paper's Table 4 -> 237.2e9 FLOPs.
    xl = create_model("SiT-XL/2")
    assert abs(timing.transformer_forward_flops(xl) / 1e9 - 237.2) < 0.3
    # Independent count: XLA's cost analysis of a small model (its dots dominate; XLA also counts
    # elementwise work, which the analytic count leaves out, so allow a few percent above).
    m = create_model("SiT-S/4", input_size=16, in_channels=4, num_classes=10)
    x, t, y = jnp.zeros((2, 16, 16, 4)), jnp.zeros((2,)), jnp.zeros((2,), jnp.int32)
    params = jax.eval_shape(lambda k: m.init(k, x, t, y)["params"], jax.random.key(0))
    compiled, _ = timing.aot_compile(lambda p: m.apply({"params": p}, x, t, y), params)
    xla = timing.xla_flops(compiled) / 2
    analytic = timing.transformer_forward_flops(m)
    assert analytic <= xla <= 1.1 * analytic, (analytic, xla)


def test_time_calls_and_mfu():
    calls = []
    tm = timing.time_calls(lambda: calls.append(1) or jnp.ones(()), repeats=3, warmup=2)
    assert len(calls) == 5 and len(tm.walls) == 3 and tm.best <= tm.median
    assert tm.summary(items=10)["images_per_s"] == 10 / tm.median
    assert timing.mfu(1e12, 2.0, 1.0) == 0.5  # 0.5 TFLOP/s against a 1 TFLOP/s peak
    assert timing.mfu(1e12, 2.0, None) is None
    with pytest.raises(ValueError, match="repeats=0"):
        timing.time_calls(lambda: None, repeats=0)


def test_step_variants_change_one_choice_at_a_time():
    """The side-by-side benchmarks' variants: the headline choices, then one change at a time."""
    head = {
        "model.attention_impl": None,
        "model.dense_impl": "transposed_input",
        "train.cpu_dot_library": None,
    }
    assert timing.step_variants([None, "xla"], ["transposed_input", "xla"], [None, "xla"]) == [
        head,
        dict(head, **{"model.attention_impl": "xla"}),
        dict(head, **{"model.dense_impl": "xla"}),
        dict(head, **{"train.cpu_dot_library": "xla"}),
    ]
    config = base_config()
    timing.apply_variant(config, dict(head, **{"train.cpu_dot_library": "xla"}))
    assert config.model.dense_impl == "transposed_input" and config.train.cpu_dot_library == "xla"
    model = create_model("SiT-S/2", attention_impl="xla", dense_impl="xla")
    mesh = parallel.create_mesh(config.parallel, jax.devices()[:1])
    label = timing.variant_label(model, config, mesh)
    assert label == "attention=xla dense=xla cpu_dots=xla"


def test_no_recompiles_between_train_steps_or_sampler_calls():
    """Step k+1 reuses step k's executable: the donated state comes back with the same avals
    (no weak-type or dtype drift in step / params / opt_state), and a sampler called with new keys
    and labels of the same shapes does not retrace."""
    import numpy as np

    from nag_jax import parallel
    from nag_jax.sampling import build, generate
    from nag_jax.training import step as step_lib
    from nag_jax.training.loop import setup_state
    from tests.fixtures import standin_loss, tiny_config, tiny_model

    cfg = tiny_config()
    mesh = parallel.create_mesh(cfg.parallel, jax.devices()[:1])
    model = tiny_model(cfg)
    state, shardings, tx = setup_state(cfg, model, mesh)
    fn = step_lib.jit_train_step(
        shardings,
        mesh,
        apply_fn=step_lib.make_apply_fn(model),
        loss_fn=standin_loss,
        tx=tx,
        ema_decay=0.99,
    )
    rng = np.random.default_rng(0)
    for _ in range(3):
        batch = {
            "x": rng.standard_normal((8, 8, 8, 3)).astype(np.float32),
            "y": rng.integers(0, 4, 8).astype(np.int32),
        }
        state, _ = fn(state, parallel.global_batch(batch, mesh))
    assert int(state.step) == 3
    assert fn._cache_size() == 1

    cfg.sample.update(sampler="sde", cfg_scale=1.5, nag_scale=1.0)
    sample = jax.jit(build.build_sampler(cfg, model))
    for seed in range(3):
        keys = generate.per_image_keys(jax.random.key(seed), np.arange(4) + 4 * seed)
        sample(state.params, keys, jnp.asarray(rng.integers(0, 4, 4), jnp.int32))
    assert sample._cache_size() == 1
