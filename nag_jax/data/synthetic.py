"""Built-in procedurally generated class-conditional image dataset: coloured shapes.

No downloads. Each example is one anti-aliased shape on a jittered background.

Classes: ``label = shape_index * 4 + colour_index`` over

    SHAPES  = ("disk", "square", "triangle", "cross", "ring")
    COLOURS = ("red", "green", "blue", "yellow")

so the default ``num_classes=16`` is {disk, square, triangle, cross} x {red, green, blue, yellow}
and ``num_classes`` may be any value in [1, 20] (the first ``num_classes`` labels of that table;
20 adds the rings). ``class_names[label]`` is e.g. ``"red disk"``.

Example ``i`` of ``ShapesDataset(image_size, num_classes, seed)`` is a pure function of
(seed, i, image_size, num_classes):
- label = i % num_classes (every run of ``num_classes`` consecutive indices holds each class once;
  the pipeline shuffles);
- jitter drawn from a counter-based hash of (seed, i, slot) (splitmix64), so rendering any set of
  indices in any order or batch size gives identical pixels:
  shape radius 0.22..0.36 x image_size, random centre (shape kept inside the frame), random
  rotation of +-15 degrees (triangle/square/cross), shape colour +-0.12 per channel around the
  class colour, background grey level in [-0.35, 0.35] with a +-0.08 per-channel tint and a gentle
  linear gradient (+-0.1 across the image).
Pixels: float32 in [-1, 1], images NHWC (H, W, 3). Time conventions: none (data only).

Variants (a domain shift for transfer experiments, e.g. Domain Guidance in miniature):
``variant="base"`` is the table above; ``variant="recoloured"`` keeps the shapes, the jitter and
the label layout and paints the classes in four NEW colours (orange, purple, cyan, pink), none
of which the base colours contain: a model trained on "base" has never seen them.

Class colours are saturated and far apart; backgrounds are low-saturation grey, so a small CNN
separates the 16 classes easily (colour from the mean, shape from edges).

Fast path: ``render_batch(indices)`` is vectorised numpy (one signed-distance evaluation per
example, grouped by shape); thousands of 32 px images per second on one core.
"""

from __future__ import annotations

import numpy as np

SHAPES = ("disk", "square", "triangle", "cross", "ring")
COLOURS = ("red", "green", "blue", "yellow")
# Class colours in [-1, 1] RGB.
COLOUR_VALUES = np.array(
    [
        [0.90, -0.80, -0.80],  # red
        [-0.80, 0.85, -0.80],  # green
        [-0.75, -0.65, 0.95],  # blue
        [0.90, 0.85, -0.85],  # yellow
    ],
    dtype=np.float32,
)
MAX_CLASSES = len(SHAPES) * len(COLOURS)
# variant -> (colour names, colour values in [-1, 1] RGB)
VARIANTS = {
    "base": (COLOURS, COLOUR_VALUES),
    "recoloured": (
        ("orange", "purple", "cyan", "pink"),
        np.array(
            [
                [0.95, 0.05, -0.90],  # orange
                [0.10, -0.85, 0.75],  # purple
                [-0.85, 0.70, 0.80],  # cyan
                [0.90, -0.20, 0.45],  # pink
            ],
            dtype=np.float32,
        ),
    ),
}

# Hash slots for the per-example jitter (each slot is an independent uniform in [0, 1)).
_SLOTS = (
    "radius",
    "cx",
    "cy",
    "angle",
    "r_jit",
    "g_jit",
    "b_jit",
    "bg",
    "bg_r",
    "bg_g",
    "bg_b",
    "grad_x",
    "grad_y",
)
_NUM_SLOTS = len(_SLOTS)

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """Vectorised splitmix64 finaliser on uint64 arrays (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return x


def hash_uniform(seed: int, indices: np.ndarray, num_slots: int) -> np.ndarray:
    """Deterministic uniforms in [0, 1): (N, num_slots) float64, a pure function of (seed, i, slot).

    Counter-based (no generator state), so any index subset or order gives the same numbers.
    """
    idx = np.asarray(indices, dtype=np.int64).astype(np.uint64)
    seed_h = _splitmix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))
    with np.errstate(over="ignore"):
        base = _splitmix64(idx ^ seed_h)[:, None]
        slots = np.arange(num_slots, dtype=np.uint64)[None, :] * np.uint64(0xD1B54A32D192ED03)
        h = _splitmix64(base + slots)
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def class_name(label: int, variant: str = "base") -> str:
    """Human-readable name of a label, e.g. 0 -> "red disk" ("orange disk" when recoloured)."""
    s, c = divmod(int(label), len(COLOURS))
    return f"{_variant(variant)[0][c]} {SHAPES[s]}"


def _variant(variant: str):
    if variant not in VARIANTS:
        raise ValueError(
            f"shapes variant={variant!r} is not known; expected one of {tuple(VARIANTS)} "
            "(config.data.synthetic_variant)."
        )
    return VARIANTS[variant]


def _rotate(u: np.ndarray, v: np.ndarray, angle: np.ndarray):
    ca, sa = np.cos(angle), np.sin(angle)
    return ca * u + sa * v, -sa * u + ca * v


def _sdf(shape: int, u: np.ndarray, v: np.ndarray, r: np.ndarray, angle: np.ndarray):
    """Signed distance (pixels, negative inside) of shape `shape` at offsets (u, v) from centre.

    u, v: (n, H, W) float32 pixel offsets (x right, y down); r, angle: (n, 1, 1).
    """
    name = SHAPES[shape]
    if name == "disk":
        return np.sqrt(u * u + v * v) - r
    if name == "ring":
        return np.abs(np.sqrt(u * u + v * v) - 0.72 * r) - 0.28 * r
    u, v = _rotate(u, v, angle)
    if name == "square":
        return np.maximum(np.abs(u), np.abs(v)) - 0.82 * r
    if name == "triangle":
        # Equilateral, apex up (y points down), circumradius 1.15 r, centred on its centroid.
        big_r = 1.15 * r
        s60, c60 = np.float32(np.sqrt(3.0) / 2.0), np.float32(0.5)
        d = np.maximum(v, np.maximum(s60 * u - c60 * v, -s60 * u - c60 * v))
        return d - 0.5 * big_r
    if name == "cross":
        w = 0.32 * r
        au, av = np.abs(u), np.abs(v)
        bar1 = np.maximum(au - r, av - w)
        bar2 = np.maximum(au - w, av - r)
        return np.minimum(bar1, bar2)
    raise ValueError(f"unknown shape {name!r}")


def render_shapes(
    labels: np.ndarray,
    uniforms: np.ndarray,
    image_size: int,
    *,
    dtype=np.float32,
    variant: str = "base",
) -> np.ndarray:
    """Renders one shape image per label.

    Args:
      labels: (N,) int in [0, MAX_CLASSES); shape = label // 4, colour = label % 4.
      uniforms: (N, 13) float in [0, 1): the per-example jitter (see `hash_uniform`).
      image_size: side S in pixels.
      variant: the colour table (``VARIANTS``).
    Returns:
      (N, S, S, 3) float32 in [-1, 1].
    """
    labels = np.asarray(labels, dtype=np.int64)
    u01 = np.asarray(uniforms, dtype=np.float64)
    n, size = labels.shape[0], int(image_size)
    if u01.shape != (n, _NUM_SLOTS):
        raise ValueError(f"uniforms must have shape ({n}, {_NUM_SLOTS}), got {u01.shape}")
    if n and (labels.min() < 0 or labels.max() >= MAX_CLASSES):
        raise ValueError(
            f"labels must be in [0, {MAX_CLASSES}), got range [{labels.min()}, {labels.max()}]"
        )
    col = dict(zip(_SLOTS, u01.T))
    f32 = np.float32
    radius = (size * (0.22 + 0.14 * col["radius"])).astype(f32)
    margin = 1.15 * radius + 0.5
    cx = (margin + (size - 2 * margin) * col["cx"]).astype(f32)
    cy = (margin + (size - 2 * margin) * col["cy"]).astype(f32)
    angle = ((col["angle"] - 0.5) * (np.pi / 6)).astype(f32)

    shape_idx, colour_idx = np.divmod(labels, len(COLOURS))
    colour = _variant(variant)[1][colour_idx] + 0.24 * (
        np.stack([col["r_jit"], col["g_jit"], col["b_jit"]], -1).astype(f32) - 0.5
    )
    grey = (col["bg"] - 0.5) * 0.7
    tint = 0.16 * (np.stack([col["bg_r"], col["bg_g"], col["bg_b"]], -1) - 0.5)
    bg_base = (grey[:, None] + tint).astype(f32)  # (N, 3)
    gx = ((col["grad_x"] - 0.5) * 0.2).astype(f32)
    gy = ((col["grad_y"] - 0.5) * 0.2).astype(f32)

    coords = np.arange(size, dtype=f32) + f32(0.5)  # pixel centres
    ramp = coords / size - f32(0.5)  # [-0.5, 0.5]
    images = np.empty((n, size, size, 3), dtype=f32)
    # Chunks of ~64k pixels keep the temporaries in cache (several times faster than whole-batch).
    chunk = max(1, 65536 // (size * size))
    for c0 in range(0, n, chunk):
        sl = slice(c0, min(n, c0 + chunk))
        gradient = (
            gx[sl, None, None] * ramp[None, None, :] + gy[sl, None, None] * ramp[None, :, None]
        )
        coverage = np.empty(gradient.shape, dtype=f32)
        shapes = shape_idx[sl]
        for s in np.unique(shapes):
            sel = np.nonzero(shapes == s)[0] + c0
            u = coords[None, None, :] - cx[sel, None, None]
            v = coords[None, :, None] - cy[sel, None, None]
            d = _sdf(int(s), u, v, radius[sel, None, None], angle[sel, None, None])
            np.subtract(f32(0.5), d, out=d)
            coverage[sel - c0] = np.minimum(np.maximum(d, f32(0.0), out=d), f32(1.0), out=d)
        # Planar per channel (inner loops over pixels, not over 3 channels -- much faster):
        # out = background * (1 - coverage) + colour * coverage, clipped to [-1, 1].
        for ch in range(3):
            bg = gradient + bg_base[sl, ch, None, None]
            val = colour[sl, ch, None, None] - bg
            val *= coverage
            val += bg
            np.maximum(val, f32(-1.0), out=val)
            images[sl, :, :, ch] = np.minimum(val, f32(1.0), out=val)
    return images.astype(dtype, copy=False)


class ShapesDataset:
    """Random-access coloured-shapes dataset (a grain ``RandomAccessDataSource``).

    Args:
      image_size: side in pixels (16..64 sensible; default 32).
      num_classes: 1..20; default 16 (4 shapes x 4 colours, see the module docstring).
      seed: dataset seed; example i is a pure function of (seed, i).
      size: number of examples `len(ds)` (the generator is unbounded; this fixes an "epoch").
      variant: "base" or "recoloured" (the module docstring); the jitter is the same.

    ``ds[i]`` -> {"image": (S, S, 3) float32 in [-1, 1], "label": int32 scalar}.
    ``ds.render_batch(indices)`` -> {"image": (N, S, S, 3), "label": (N,)}, identical to stacking
    ``ds[i]`` but vectorised.
    """

    def __init__(
        self,
        image_size: int = 32,
        num_classes: int = 16,
        seed: int = 0,
        size: int = 100_000,
        variant: str = "base",
    ):
        _variant(variant)
        if not 1 <= int(num_classes) <= MAX_CLASSES:
            raise ValueError(
                f"ShapesDataset num_classes={num_classes} is not supported: expected 1.."
                f"{MAX_CLASSES} ({len(SHAPES)} shapes x {len(COLOURS)} colours); use 16 for the "
                "default 4x4 grid"
            )
        if int(image_size) < 8:
            raise ValueError(f"ShapesDataset image_size={image_size} too small: expected >= 8")
        if int(size) < 1:
            raise ValueError(f"ShapesDataset size={size}: expected a positive number of examples")
        self.image_size = int(image_size)
        self.num_classes = int(num_classes)
        self.seed = int(seed)
        self.size = int(size)
        self.variant = variant
        self.class_names = [class_name(c, variant) for c in range(self.num_classes)]

    def __len__(self) -> int:
        return self.size

    def __repr__(self) -> str:
        return (
            f"ShapesDataset(image_size={self.image_size}, num_classes={self.num_classes}, "
            f"seed={self.seed}, size={self.size}, variant={self.variant!r})"
        )

    def labels_of(self, indices) -> np.ndarray:
        """(N,) int32 labels of the given example indices (label = i % num_classes)."""
        return (np.asarray(indices, dtype=np.int64) % self.num_classes).astype(np.int32)

    def render_batch(self, indices, labels=None) -> dict:
        """Vectorised rendering of examples `indices` ((N,) ints, any values >= 0).

        labels: optional (N,) ints in [0, num_classes) overriding the class (the jitter still
        comes from the indices) -- e.g. to draw real images of chosen classes.
        Returns {"image": (N, S, S, 3) float32 in [-1, 1], "label": (N,) int32}.
        """
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if labels is None:
            labels = self.labels_of(indices)
        else:
            labels = np.asarray(labels, dtype=np.int32).reshape(-1)
            if labels.shape != indices.shape:
                raise ValueError(
                    f"labels shape {labels.shape} must match indices shape {indices.shape}"
                )
            if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
                raise ValueError(
                    f"labels must be in [0, {self.num_classes}), got [{labels.min()}, "
                    f"{labels.max()}]"
                )
        uniforms = hash_uniform(self.seed, indices, _NUM_SLOTS)
        images = render_shapes(labels, uniforms, self.image_size, variant=self.variant)
        return {"image": images, "label": labels.astype(np.int32)}

    def random_batch(self, rng: np.random.Generator | int, batch_size: int, labels=None) -> dict:
        """A batch of examples with random indices drawn from `rng` (a numpy Generator or int)."""
        rng = np.random.default_rng(rng)
        indices = rng.integers(0, 2**62, size=int(batch_size), dtype=np.int64)
        return self.render_batch(indices, labels)

    def __getitem__(self, index):
        index = int(index)
        if not 0 <= index < self.size:
            raise IndexError(f"ShapesDataset index {index} out of range [0, {self.size})")
        batch = self.render_batch(np.array([index]))
        return {"image": batch["image"][0], "label": np.int32(batch["label"][0])}
