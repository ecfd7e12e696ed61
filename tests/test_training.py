"""Train state, optimizer selection, EMA, NaN stop, clear errors, NAG fine-tuning from a release.

Tiny SiT (hidden 32, depth 1, 8x8x3). Most tests use a stand-in flow-matching loss
(tests.fixtures) to pin the training machinery; one runs the real NAG objective end to
end (train.run -> make_nag_loss on the synthetic pipeline).
"""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from nag_jax import parallel
from nag_jax.storage.weights import save_params
from nag_jax.training import checkpoint as ckpt
from nag_jax.training import run_config
from nag_jax.training import step as step_lib
from nag_jax.training.finetune import mean_time_embedding, training_times
from nag_jax.training.loop import NonFiniteLossError, run, setup_state
from nag_jax.training.state import (
    TrainState,
    create_optimizer,
    learning_rate_schedule,
    trainable_labels,
)
from tests.fixtures import standin_loss, tiny_config, tiny_model


def _one_device_setup(cfg, loss_fn=standin_loss):
    mesh = parallel.create_mesh(cfg.parallel, jax.devices()[:1])
    model = tiny_model(cfg)
    # adaLN-Zero init gives zero output (and zero conditioning grads): re-randomise.
    abstract = setup_state(cfg, model, mesh)[0].params
    keys = iter(jax.random.split(jax.random.PRNGKey(1), len(jax.tree.leaves(abstract))))
    params = jax.tree.map(lambda a: 0.1 * jax.random.normal(next(keys), a.shape), abstract)
    state, shardings, tx = setup_state(cfg, model, mesh, params=params)
    fn = step_lib.jit_train_step(
        shardings,
        mesh,
        apply_fn=step_lib.make_apply_fn(model),
        loss_fn=loss_fn,
        tx=tx,
        ema_decay=float(cfg.optim.ema_decay),
        donate=False,
    )
    rng = np.random.default_rng(0)
    batch = {
        "x": rng.uniform(-1, 1, (8, 8, 8, 3)).astype(np.float32),
        "y": rng.integers(0, 4, 8).astype(np.int32),
    }
    return model, state, fn, parallel.global_batch(batch, mesh)


def test_step_updates_ema_and_trains_only_the_null_token():
    cfg = tiny_config()
    cfg.optim.ema_decay = 0.75
    cfg.optim.trainable = "null_token"
    # every example drops its noise condition, so the null token surely gets a gradient
    _, s0, fn, batch = _one_device_setup(cfg, functools.partial(standin_loss, p_noise_drop=1.0))
    s1, metrics = fn(s0, batch)
    assert int(s1.step) == 1 and bool(metrics["finite"])
    p0, p1 = jax.device_get(s0.params), jax.device_get(s1.params)
    for path, a in jax.tree_util.tree_leaves_with_path(p0):
        b = p1
        for k in path:
            b = b[k.key]
        if parallel.path_str(path) == "null_noise_token":
            assert not np.array_equal(a, b)  # trained (AdamW step of size ~lr)
            np.testing.assert_allclose(np.abs(a - b), cfg.optim.lr, rtol=1e-2)
        else:
            np.testing.assert_array_equal(a, b)  # frozen
    ema = jax.device_get(s1.ema_params)
    np.testing.assert_allclose(  # ema = d * p0 + (1 - d) * p1, ema started at p0
        ema["null_noise_token"],
        0.75 * p0["null_noise_token"] + 0.25 * p1["null_noise_token"],
        rtol=1e-6,
    )
    # Only the trainable leaf carries Adam moments.
    moments = [x for x in jax.tree.leaves(s1.opt_state) if getattr(x, "ndim", 0) > 0]
    assert [x.shape for x in moments] == [(32,), (32,)]


def test_trainable_regex_and_schedule():
    params = {"t_embedder": {"mlp_0": {"kernel": 0}}, "blocks_0": {"x": 0}, "null_noise_token": 0}
    labels = trainable_labels(params, "t_embedder|null")
    assert labels == {
        "t_embedder": {"mlp_0": {"kernel": "train"}},
        "blocks_0": {"x": "freeze"},
        "null_noise_token": "train",
    }
    with pytest.raises(ValueError, match="selects no parameter"):
        trainable_labels(params, "nothing_matches")
    cfg = tiny_config()
    cfg.optim.warmup_steps = 10
    sched = learning_rate_schedule(cfg.optim)
    assert [float(sched(i)) for i in (0, 5, 10, 50)] == pytest.approx([0.0, 5e-4, 1e-3, 1e-3])
    # The optimizer follows the schedule: with b1 = b2 = 0 and eps = 0 AdamW's update is
    # -lr_k * g / |g| (hand calc), so a constant gradient shows lr_k step by step.
    cfg.optim.update(b1=0.0, b2=0.0, eps=0.0)
    params = {"w": jnp.zeros(3)}
    grads = {"w": jnp.array([2.0, -0.5, 1.0])}
    tx = create_optimizer(cfg.optim, params)
    opt_state = tx.init(params)
    for k in range(12):
        updates, opt_state = tx.update(grads, opt_state, params)
        np.testing.assert_allclose(
            updates["w"], -min(k, 10) * 1e-4 * np.sign(grads["w"]), rtol=1e-5, atol=1e-12
        )


def test_cosine_decay_schedule_by_hand():
    # lr 1e-3, warmup 10, decay ending at step 110: linear to 1e-3 at 10, then
    # 1e-3 * (1 + cos(pi * (s - 10) / 100)) / 2: half at 60, 0 at 110 and after (hand values).
    cfg = tiny_config()
    cfg.optim.update(lr=1e-3, warmup_steps=10, decay_steps=110)
    sched = learning_rate_schedule(cfg.optim)
    want = [0.0, 5e-4, 1e-3, 1e-3 * (1 + np.cos(np.pi * 0.25)) / 2, 5e-4, 0.0, 0.0]
    got = [float(sched(s)) for s in (0, 5, 10, 35, 60, 110, 200)]
    np.testing.assert_allclose(got, want, atol=1e-9)
    cfg.optim.decay_steps = 10  # the decay would end where the warmup ends
    with pytest.raises(ValueError, match="decay_steps=10 must exceed optim.warmup_steps=10"):
        learning_rate_schedule(cfg.optim)


def test_grad_clip_bounds_the_update():
    # b1 = b2 = 0, eps = 1, lr = 1: AdamW's update is -g / (|g| + 1) elementwise (hand calc).
    params = {"w": jnp.zeros(4)}
    grads = {"w": jnp.array([3.0, 4.0, 0.0, 0.0])}
    cfg = tiny_config()
    cfg.optim.update(b1=0.0, b2=0.0, eps=1.0, lr=1.0)
    for clip, g in ((None, np.array([3.0, 4.0, 0, 0])), (1e-3, np.array([0.6e-3, 0.8e-3, 0, 0]))):
        cfg.optim.grad_clip = clip
        tx = create_optimizer(cfg.optim, params)
        updates, _ = tx.update(grads, tx.init(params), params)
        np.testing.assert_allclose(updates["w"], -g / (np.abs(g) + 1), rtol=1e-5)


def test_nonfinite_loss_stops_with_step_and_keeps_last_good_checkpoint(tmp_path):
    cfg = tiny_config(num_steps=5, checkpoint_every=1, log_every=100)
    cfg.optim.lr = 1e30  # the first update makes params ~1e30 -> the second loss overflows
    with pytest.raises(
        NonFiniteLossError, match=r"(?s)NaN/Inf at step 2.*a resume restores step 1"
    ):
        run(cfg, str(tmp_path), model=tiny_model(cfg), loss_fn=standin_loss)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1"]


def test_workdir_with_another_runs_config_is_refused(tmp_path):
    cfg = tiny_config()
    run_config.check_or_write_config(cfg, str(tmp_path))
    run_config.check_or_write_config(cfg, str(tmp_path))  # same run: fine
    other = tiny_config()
    other.model.depth = 2
    msg = r"(?s)holds another run.*model.depth: workdir 1 vs config 2"
    with pytest.raises(ValueError, match=msg):
        run_config.check_or_write_config(other, str(tmp_path))
    with pytest.raises(ValueError, match="holds another run"):
        run(other, str(tmp_path), model=tiny_model(other), loss_fn=standin_loss)


def test_checkpoint_from_another_model_names_mismatched_params(tmp_path):
    cfg = tiny_config()
    mesh = parallel.create_mesh(cfg.parallel, jax.devices()[:1])
    state, _, _ = setup_state(cfg, tiny_model(cfg), mesh)
    mngr = ckpt.create_manager(str(tmp_path), async_save=False)
    ckpt.save(mngr, state)
    big = tiny_config()
    big.model.hidden_size = 64
    abstract = jax.eval_shape(lambda: setup_state(big, tiny_model(big), mesh)[0])
    with pytest.raises(
        ValueError,
        match=r"blocks_0/attn/qkv/kernel: checkpoint \(32, 96\) vs model \(64, 192\)",
    ):
        ckpt.restore(mngr, abstract)


def test_clear_errors_for_bad_batch_model_name_and_data_dir(tmp_path):
    cfg = tiny_config()
    cfg.data.global_batch_size = 12
    with pytest.raises(ValueError, match=r"12 does not divide over the 8 batch shards"):
        run(cfg, str(tmp_path / "a"), loss_fn=standin_loss)
    cfg = tiny_config()
    cfg.model.name = "SiT-Q/2"
    with pytest.raises(ValueError, match="SiT-Q/2"):
        run(cfg, str(tmp_path / "b"), loss_fn=standin_loss)
    assert not os.path.exists(tmp_path / "b" / "config.json")  # nothing written for a bad config
    cfg = tiny_config()
    cfg.data.update(name="image_folder", data_dir=str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="missing"):
        run(cfg, str(tmp_path / "c"), model=tiny_model(cfg), loss_fn=standin_loss)


def _hand_t_embedding(params, t):
    """The release's timestep embedding MLP in numpy (cos first, 256 freqs, SiLU)."""
    half = 128
    freqs = np.exp(-np.log(10000.0) * np.arange(half) / half)
    args = np.asarray(t, np.float64)[:, None] * freqs[None]
    emb = np.concatenate([np.cos(args), np.sin(args)], axis=-1)
    m0, m2 = params["t_embedder"]["mlp_0"], params["t_embedder"]["mlp_2"]
    h = emb @ np.asarray(m0["kernel"], np.float64) + np.asarray(m0["bias"], np.float64)
    h = h / (1 + np.exp(-h))
    return h @ np.asarray(m2["kernel"], np.float64) + np.asarray(m2["bias"], np.float64)


def test_finetune_from_converted_release_creates_mean_t_embedding_token(tmp_path):
    cfg = tiny_config(num_steps=2, checkpoint_every=0, log_every=1)
    cfg.optim.trainable = "null_token"
    model = tiny_model(cfg)
    x, t, y = jnp.zeros((1, 8, 8, 3)), jnp.zeros((1,)), jnp.zeros((1,), jnp.int32)
    release = model.init(jax.random.PRNGKey(42), x, t, y)["params"]
    release = jax.tree.map(np.array, dict(release))  # writable copies
    release.pop("null_noise_token")  # the releases have no null token
    release["t_embedder"]["mlp_0"]["bias"] += 0.5  # make the embedding non-trivial
    # Written exactly as `python -m nag_jax.convert to-orbax` writes a release.
    save_params(str(tmp_path / "release"), release, {"family": "SiT", "model": "SiT-S/2"})

    times = training_times(cfg)
    assert times.shape == (1000,) and times.min() > 0 and times.max() < 1
    expected = _hand_t_embedding(release, times).mean(axis=0)
    got = mean_time_embedding(model, release, times)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)

    cfg.model.weights = str(tmp_path / "release")
    state = run(cfg, str(tmp_path / "wd"), model=model, loss_fn=standin_loss)
    final = jax.device_get(state.params)
    assert int(state.step) == 2
    for path, a in jax.tree_util.tree_leaves_with_path(release):
        b = final
        for k in path:
            b = b[k.key]
        np.testing.assert_array_equal(a, b)  # the release's weights stay frozen
    token = final["null_noise_token"]
    assert np.abs(token - expected).max() < 3 * cfg.optim.lr  # started at the mean embedding

    cfg2 = tiny_config()
    cfg2.model.hidden_size = 64
    cfg2.model.weights = str(tmp_path / "release")
    with pytest.raises(ValueError, match=r"(?s)different model.*t_embedder/mlp_2/kernel"):
        run(cfg2, str(tmp_path / "wd2"), model=tiny_model(cfg2), loss_fn=standin_loss)


def test_metric_writer_writes_tensorboard_scalars_and_images(tmp_path):
    import tensorflow as tf

    from nag_jax.training.metrics import Progress, create_writer

    writer = create_writer(str(tmp_path))
    writer.write_scalars(5, {"loss": 0.25})
    writer.write_images(5, {"samples": np.zeros((1, 6, 6, 3), np.uint8)})
    writer.flush()
    seen = set()
    for root, _, files in os.walk(tmp_path):
        for f in files:
            for event in tf.compat.v1.train.summary_iterator(os.path.join(root, f)):
                for v in event.summary.value:
                    seen.add((event.step, v.tag, v.metadata.plugin_data.plugin_name))
    assert {(5, "loss", "scalars"), (5, "samples", "images")} <= seen
    progress = Progress(num_steps=100, global_batch_size=8, start_step=0)
    report = progress(10)
    assert report["examples_per_sec"] == pytest.approx(8 * report["steps_per_sec"])
    # nothing excluded: the wall-clock pace is the training pace
    assert report["eta_seconds"] == pytest.approx(90 / report["steps_per_sec"])


def test_transfer_to_new_label_set_reinitialises_only_the_label_table(tmp_path):
    cfg = tiny_config(num_steps=1, checkpoint_every=0, log_every=1)
    model = tiny_model(cfg)
    x, t, y = jnp.zeros((1, 8, 8, 3)), jnp.zeros((1,)), jnp.zeros((1,), jnp.int32)
    release = jax.tree.map(np.array, dict(model.init(jax.random.PRNGKey(3), x, t, y)["params"]))
    release.pop("null_noise_token")
    writer = ocp.StandardCheckpointer()
    writer.save(str(tmp_path / "release"), release)
    writer.wait_until_finished()
    new = tiny_config(num_steps=1, checkpoint_every=0, log_every=1)
    new.model.num_classes = 6
    new.optim.lr = 0.0  # keep the starting point visible after one step
    new.model.weights = str(tmp_path / "release")
    with pytest.raises(
        ValueError, match=r"y_embedder/embedding_table/embedding: checkpoint \(5, 32\)"
    ):
        run(new, str(tmp_path / "a"), model=tiny_model(new), loss_fn=standin_loss)
    new.train.reinit = r"^y_embedder/"
    state = run(new, str(tmp_path / "b"), model=tiny_model(new), loss_fn=standin_loss)
    params = jax.device_get(state.params)
    assert params["y_embedder"]["embedding_table"]["embedding"].shape == (7, 32)
    np.testing.assert_array_equal(
        params["t_embedder"]["mlp_2"]["kernel"], release["t_embedder"]["mlp_2"]["kernel"]
    )


def test_bfloat16_compute_keeps_float32_params_and_state():
    cfg = tiny_config()
    cfg.model.dtype = "bfloat16"
    _, s0, fn, batch = _one_device_setup(cfg)
    s1, metrics = fn(s0, batch)
    assert bool(metrics["finite"])
    for tree in (s1.params, s1.ema_params):
        assert {x.dtype for x in jax.tree.leaves(tree)} == {jnp.dtype(jnp.float32)}
    moments = [x for x in jax.tree.leaves(s1.opt_state) if getattr(x, "ndim", 0) > 0]
    assert {x.dtype for x in moments} == {jnp.dtype(jnp.float32)}
    # The bf16 loss is close to, but not bit-equal with, the float32 loss on the same params.
    cfg32 = tiny_config()
    _, t0, fn32, _ = _one_device_setup(cfg32)
    _, m32 = fn32(t0, batch)
    assert float(metrics["loss"]) == pytest.approx(float(m32["loss"]), rel=0.05)


def test_retention_keeps_last_n_plus_every_k(tmp_path):
    mngr = ckpt.create_manager(str(tmp_path), keep=2, keep_every=4, async_save=False)
    for step in range(1, 10):
        state = TrainState(
            step=jnp.int32(step),
            params={"w": jnp.full((2,), float(step))},
            ema_params={"w": jnp.zeros(2)},
            opt_state={"m": jnp.zeros(2)},
            rng=jax.random.PRNGKey(0),
        )
        ckpt.save(mngr, state)
    mngr.wait_until_finished()
    assert sorted(mngr.all_steps()) == [4, 8, 9]  # latest 2 = {8, 9}, every 4th = {4, 8}
    restored = ckpt.restore(mngr, state, step=4)
    np.testing.assert_array_equal(restored.params["w"], [4.0, 4.0])
    assert int(restored.step) == 4


@pytest.mark.parametrize("p_noise_drop", [0.0, 0.5])
def test_real_nag_loss_end_to_end_trains_the_null_token_only_with_noise_dropout(
    tmp_path, p_noise_drop
):
    """train.run with no stand-ins: builders' model and process, make_nag_loss, the synthetic
    data pipeline. The null noise token enters the network only for noise-dropped examples, so
    it moves iff p_noise_drop > 0 (AdamW with zero gradients and no weight decay leaves a param
    exactly as it was); every other weight trains either way."""
    cfg = tiny_config(num_steps=4, checkpoint_every=0, log_every=1)
    cfg.objective.p_noise_drop = p_noise_drop
    model = tiny_model(cfg)
    mesh = parallel.create_mesh(cfg.parallel)
    init = jax.device_get(setup_state(cfg, model, mesh)[0].params)  # run's own start (seed)
    state = run(cfg, str(tmp_path))
    final = jax.device_get(state.params)
    assert int(state.step) == 4
    moved = not np.array_equal(final["null_noise_token"], init["null_noise_token"])
    assert moved == (p_noise_drop > 0)
    assert not np.array_equal(
        final["final_layer"]["linear"]["kernel"], init["final_layer"]["linear"]["kernel"]
    )


def test_trainer_calls_the_evaluators_it_is_given_every_eval_every_steps(tmp_path):
    """Evaluation is injected (nag_jax.main passes evaluation.evaluators.from_config): built once
    at the first evaluation, called on the EMA params every eval_every steps, logged."""
    cfg = tiny_config(num_steps=6, checkpoint_every=0, log_every=100, eval_every=2)
    made, seen = [], []

    def make_evaluators(model, mesh):
        made.append((model, mesh.shape))
        return {"probe": lambda params: seen.append(params) or {"eval/probe": float(len(seen))}}

    state = run(
        cfg,
        str(tmp_path),
        model=tiny_model(cfg),
        loss_fn=standin_loss,
        make_evaluators=make_evaluators,
    )
    assert len(made) == 1 and len(seen) == 3  # steps 2, 4, 6
    final_ema = jax.device_get(state.ema_params)
    np.testing.assert_array_equal(
        jax.device_get(seen[-1])["null_noise_token"], final_ema["null_noise_token"]
    )


def test_training_grid_draws_images_0_to_n_of_the_seed_like_sample_and_eval(tmp_path):
    """The periodic grid is images 0..N-1 of config.seed (nag_jax.sampling.generate), labels 0, 1,
    ...:
    the same images the sharded batch sampler of sample / eval mode draws for those labels."""
    from nag_jax.sampling import generate
    from nag_jax.training.loop import make_grid_sampler, write_grid
    from nag_jax.utils import to_uint8

    cfg = tiny_config()
    cfg.seed = 5
    _, state, _, _ = _one_device_setup(cfg)  # re-randomised params: images depend on them
    params = jax.device_get(state.params)
    mesh = parallel.create_mesh(cfg.parallel)
    grid = make_grid_sampler(cfg, tiny_model(cfg), mesh)(params)
    assert grid.shape == (4, 8, 8, 3)
    cfg.sample.labels = (0, 1, 2, 3)
    run_batch = generate.make_batch_sampler(cfg, tiny_model(cfg), params, mesh)
    images, labels = run_batch(params, np.arange(8))  # 8 = a multiple of the 8 devices
    np.testing.assert_array_equal(labels[:4], [0, 1, 2, 3])
    assert np.abs(to_uint8(grid).astype(int) - images[:4].astype(int)).max() <= 1
    assert len(np.unique(images[:4].reshape(4, -1), axis=0)) == 4

    class _Writer:
        def write_images(self, step, images):
            self.images = images

    w = _Writer()
    path = write_grid(str(tmp_path), w, 3, grid)
    assert path.endswith("step_00000003.png") and os.path.exists(path)
    assert w.images["samples"].shape[0] == 1 and w.images["samples"].shape[-1] == 3


def test_cpu_dot_library_compiles_onednn_dots_with_the_same_updates():
    """train.cpu_dot_library on this CPU: "onednn" compiles the step's products as XLA's oneDNN
    fusions, "xla" has none; two steps of each from the same state give the same loss and params
    to float32 rounding. None picks the host's default; an unknown name is named."""
    import platform

    cfg = tiny_config()
    model, state, fn_default, batch = _one_device_setup(cfg)
    mesh = parallel.create_mesh(cfg.parallel, jax.devices()[:1])
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    assert step_lib.compiler_options(None, mesh) == (
        step_lib.compiler_options("onednn", mesh) if x86 else None
    )
    assert step_lib.compiler_options("xla", mesh) is None
    with pytest.raises(ValueError, match=r"cpu_dot_library='mkl'.*None picks"):
        step_lib.compiler_options("mkl", mesh)
    shardings = jax.tree.map(lambda a: a.sharding, state)
    state = state.replace(opt_state=optax.sgd(0.1).init(state.params))
    shardings = shardings.replace(opt_state=jax.tree.map(lambda a: a.sharding, state.opt_state))
    results = {}
    for library in ("onednn", "xla"):
        fn = step_lib.jit_train_step(
            shardings,
            mesh,
            apply_fn=step_lib.make_apply_fn(model),
            loss_fn=standin_loss,
            # plain SGD: updates linear in the gradients (Adam's m / sqrt(v) would turn rounding
            # in a near-zero gradient into a full lr-sized step)
            tx=optax.sgd(0.1),
            ema_decay=float(cfg.optim.ema_decay),
            donate=False,
            cpu_dot_library=library,
        )
        hlo = fn.lower(state, batch).compile().as_text()
        assert ("__onednn_fusion" in hlo) == (library == "onednn")
        s = state
        for _ in range(2):
            s, metrics = fn(s, batch)
        results[library] = (float(metrics["loss"]), s.params)
    (l_o, p_o), (l_x, p_x) = results["onednn"], results["xla"]
    np.testing.assert_allclose(l_o, l_x, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(p_o), jax.tree.leaves(p_x), strict=True):
        # float32 rounding relative to the leaf's largest entry (the params are ~0.1-0.4 here)
        assert float(np.abs(np.asarray(a) - np.asarray(b)).max()) <= 1e-5 * float(np.abs(b).max())
