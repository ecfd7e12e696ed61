"""The SD-VAE's configuration: `VAEConfig` (the network-defining subset of a diffusers
``AutoencoderKL`` config.json) and the latent scale, the project's ONE home of 0.18215.

``latents = (posterior - shift_factor) * scaling_factor``; the SD-VAE checkpoints the DiT/SiT
releases use (stabilityai/sd-vae-ft-ema and -mse) have ``scaling_factor = VAE_SCALE = 0.18215``
and no shift. No time convention is involved here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

__all__ = [
    "Dtype",
    "vae_scale",
    "VAE_SCALE",
    "SUPPORTED_DOWN_BLOCK",
    "SUPPORTED_UP_BLOCK",
    "VAEConfig",
]

Dtype = Any

vae_scale = 0.18215
"""Latent scaling factor of the SD-VAE (``latents = posterior * vae_scale``)."""
VAE_SCALE = vae_scale

SUPPORTED_DOWN_BLOCK = "DownEncoderBlock2D"
SUPPORTED_UP_BLOCK = "UpDecoderBlock2D"


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    """The subset of a diffusers ``AutoencoderKL`` config.json that defines the network.

    Defaults are the SD-VAE (stabilityai/sd-vae-ft-ema / -mse). ``from_dict`` accepts the
    diffusers dict (keys starting with ``_`` ignored) and refuses settings this port does not
    implement, naming the key.
    """

    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    latent_channels: int = 4
    norm_num_groups: int = 32
    act_fn: str = "silu"
    sample_size: int = 256
    scaling_factor: float = vae_scale
    shift_factor: float | None = None
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True

    def __post_init__(self):
        object.__setattr__(
            self, "block_out_channels", tuple(int(c) for c in self.block_out_channels)
        )
        if not self.block_out_channels:
            raise ValueError(
                "VAEConfig.block_out_channels is empty; expected e.g. (128, 256, 512, 512)"
            )
        for c in self.block_out_channels:
            if c % self.norm_num_groups:
                raise ValueError(
                    f"VAEConfig: block_out_channels {self.block_out_channels} must all be "
                    f"divisible by norm_num_groups={self.norm_num_groups}; change one of them"
                )
        if self.act_fn not in ("silu", "swish"):
            raise ValueError(f"VAEConfig.act_fn={self.act_fn!r} is not supported; expected 'silu'")
        if self.layers_per_block < 1:
            raise ValueError(f"VAEConfig.layers_per_block={self.layers_per_block}; expected >= 1")

    @property
    def downsample_factor(self) -> int:
        """Pixels per latent per side (8 for the SD-VAE)."""
        return 2 ** (len(self.block_out_channels) - 1)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> VAEConfig:
        """Builds a config from a diffusers ``AutoencoderKL`` config.json dict."""
        cls_name = dict(d).get("_class_name")
        d = {k: v for k, v in dict(d).items() if not k.startswith("_")}
        if cls_name not in (None, "AutoencoderKL"):
            raise ValueError(f"VAE config _class_name={cls_name!r}; expected 'AutoencoderKL'")
        n = len(d.get("block_out_channels", cls.block_out_channels))
        for key, want in (
            ("down_block_types", SUPPORTED_DOWN_BLOCK),
            ("up_block_types", SUPPORTED_UP_BLOCK),
        ):
            types = d.pop(key, None)
            if types is None:
                continue
            if list(types) != [want] * n:
                raise ValueError(
                    f"VAE config {key}={list(types)} is not supported; expected {n} x {want!r} "
                    "(one per entry of block_out_channels)"
                )
        for key in ("latents_mean", "latents_std"):
            if d.pop(key, None) is not None:
                raise ValueError(
                    f"VAE config sets {key}; per-channel latent statistics are not supported"
                )
        d.pop("force_upcast", None)
        if "norm_type" in d and d.pop("norm_type") != "group":
            raise ValueError("VAE config norm_type must be 'group' (spatial norm is not supported)")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields)
        if unknown:
            raise ValueError(
                f"VAE config has keys this port does not implement: {unknown}; "
                f"supported: {sorted(fields)}"
            )
        if isinstance(d.get("sample_size"), (list, tuple)):
            d["sample_size"] = int(d["sample_size"][0])
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        """The diffusers-style config.json dict (loadable by diffusers and by ``from_dict``)."""
        d = dataclasses.asdict(self)
        d["block_out_channels"] = list(self.block_out_channels)
        n = len(self.block_out_channels)
        return {
            "_class_name": "AutoencoderKL",
            "down_block_types": [SUPPORTED_DOWN_BLOCK] * n,
            "up_block_types": [SUPPORTED_UP_BLOCK] * n,
            **d,
        }


def _as_config(config) -> VAEConfig:
    if config is None:
        return VAEConfig()
    if isinstance(config, VAEConfig):
        return config
    if isinstance(config, Mapping):
        return VAEConfig.from_dict(config)
    raise TypeError(
        f"VAE config must be a VAEConfig or a diffusers config dict, got {type(config)}"
    )
