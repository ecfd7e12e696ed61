"""Shared pytest setup.

Eight virtual CPU devices are created before JAX is imported so that sharding tests run in-process;
tests that do not shard simply use the first device.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
