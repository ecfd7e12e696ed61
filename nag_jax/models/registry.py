"""Model-size registry: names like ``"SiT-XL/2"`` or ``"DiT-B/4"``.

SiT and DiT share one backbone (same modules, same parameter names and shapes); the family prefix
decides the time input and the diffusion process (see nag_jax.sampling.build), not the network.
"""

from __future__ import annotations

import re

FAMILIES = ("DiT", "SiT")

# depth, hidden size, heads — the releases' sizes.
MODEL_SIZES = {
    "XL": dict(depth=28, hidden_size=1152, num_heads=16),
    "L": dict(depth=24, hidden_size=1024, num_heads=16),
    "B": dict(depth=12, hidden_size=768, num_heads=12),
    "S": dict(depth=12, hidden_size=384, num_heads=6),
}
PATCH_SIZES = (2, 4, 8)

_NAME_RE = re.compile(r"^(?P<family>[A-Za-z]+)-(?P<size>[A-Za-z]+)/(?P<patch>\d+)$")


def model_names() -> list[str]:
    """All registered names, e.g. ``['DiT-XL/2', 'DiT-XL/4', ..., 'SiT-S/8']``."""
    return [f"{f}-{s}/{p}" for f in FAMILIES for s in MODEL_SIZES for p in PATCH_SIZES]


def parse_model_name(name: str) -> tuple[str, str, int]:
    """``"SiT-XL/2" -> ("SiT", "XL", 2)``; raises a ValueError naming the valid choices."""
    m = _NAME_RE.match(str(name))
    ok = (
        m is not None
        and m["family"] in FAMILIES
        and m["size"] in MODEL_SIZES
        and int(m["patch"]) in PATCH_SIZES
    )
    if not ok:
        raise ValueError(
            f"Unknown model name {name!r}. Expected '<family>-<size>/<patch>' with family in "
            f"{FAMILIES}, size in {tuple(MODEL_SIZES)}, patch in {PATCH_SIZES} "
            f"(e.g. 'SiT-XL/2'); custom widths go in overrides (hidden_size, depth, num_heads)."
        )
    return m["family"], m["size"], int(m["patch"])
