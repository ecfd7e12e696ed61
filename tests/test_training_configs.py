"""The training configs: schema, documented commands, release numbers, XL sizes (abstract only)."""

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nag_jax import parallel
from nag_jax.sampling import build

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
FILES = [
    "sit_xl.py",
    "dit_xl.py",
    "sit_xl_nag_finetune.py",
    "dit_xl_nag_finetune.py",
    "finetune_fine_grained.py",
]
SECTIONS = ("model", "process", "objective", "data", "optim", "train", "sample", "parallel")


def _load(name):
    spec = importlib.util.spec_from_file_location(name[:-3], os.path.join(CONFIGS, name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", FILES)
def test_config_schema_and_docstring_command(name):
    module = _load(name)
    assert (
        module.__doc__.split("\n\n")[1]
        .strip()
        .startswith(f"python -m nag_jax.main --config=configs/{name}")
    )
    c = module.get_config()
    assert c.mode == "train" and isinstance(c.seed, int)
    for s in SECTIONS:
        assert s in c, s
    assert c.optim.lr == 1e-4 and c.optim.weight_decay == 0.0 and c.optim.ema_decay == 0.9999
    assert c.objective.p_class_drop == 0.1
    assert c.model.dtype == "bfloat16"  # compute; params stay float32
    c.model.weights = "ckpt/x"  # placeholders accept overrides
    c.train.keep_every = 5


def test_release_and_finetune_numbers():
    sit = _load("sit_xl.py").get_config()
    assert sit.data.global_batch_size == 256 and sit.objective.p_noise_drop == 0.1
    assert (sit.model.input_size, sit.model.in_channels) == (32, 4)  # 256px SD-VAE latents
    ft = _load("sit_xl_nag_finetune.py").get_config()
    # ~10 epochs of ImageNet's 1,281,167 images at batch 256.
    assert ft.train.num_steps == round(10 * 1_281_167 / 256) == 50_046
    assert ft.optim.trainable == "all" and ft.train.null_token_init == "mean_t_embedding"
    assert _load("dit_xl_nag_finetune.py").get_config("null_token").optim.trainable == "null_token"
    fg = _load("finetune_fine_grained.py")
    assert fg.get_config("cars196").model.num_classes == 196
    assert fg.get_config("caltech_birds2011,nonag").objective.p_noise_drop == 0.0
    enc = fg.get_config("df20m,encode")
    assert (enc.mode, enc.data.name) == ("encode_latents", "image_folder")
    enc.encode.image_data_dir = "/data/df20m"  # referenced, so overrides reach config.data
    assert enc.data.data_dir == "/data/df20m"
    with pytest.raises(ValueError, match="DATASET"):
        fg.get_config("mnist")


def test_sit_xl_param_count_and_fsdp_bytes_from_abstract_shapes():
    c = _load("sit_xl.py").get_config()
    model = build.build_model(c.model)
    x = jnp.zeros((1, 32, 32, 4))
    abstract = jax.eval_shape(
        lambda k: model.init(k, x, jnp.zeros((1,)), jnp.zeros((1,), jnp.int32))["params"],
        jax.random.PRNGKey(0),
    )
    n = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(abstract))
    # Release state dict 675,129,632 minus the fixed pos_embed (256 x 1152) plus the null token.
    assert n == 675_129_632 - 256 * 1152 + 1152
    mesh = parallel.create_mesh(c.parallel)  # FSDP over the 8 test devices
    shardings = parallel.tree_shardings(abstract, mesh, fsdp_min_size=c.parallel.fsdp_min_size)
    per_device = sum(
        int(np.prod(s.shard_shape(a.shape))) * 4
        for a, s in zip(jax.tree.leaves(abstract), jax.tree.leaves(shardings))
    )
    assert per_device < 1.01 * n * 4 / 8  # ~1/8 of the float32 params on each device
