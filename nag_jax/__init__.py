"""nag_jax: Noise Awareness Guidance (NAG) for DiT and SiT models in JAX/Flax."""

__version__ = "0.1.0"
