"""Shared pytest setup.

Eight virtual CPU devices are created before JAX is imported so that sharding tests run in-process;
tests that do not shard simply use the first device.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
# Subprocess tests (resume after kill -9, multi-process) recompile the same train step: share a
# persistent compilation cache between them.
jax.config.update(
    "jax_compilation_cache_dir",
    os.environ.get("NAG_JAX_TEST_CACHE", os.path.join(os.path.dirname(__file__), ".jax_cache")),
)
