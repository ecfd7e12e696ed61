"""Data layer: grain pipelines and the built-in synthetic shapes dataset.

Importing this package is cheap (numpy only); TensorFlow / tfds / PIL / array_record are imported
lazily by the sources that need them.

    from nag_jax.data import ShapesDataset, create_dataset
"""

from nag_jax.data.synthetic import COLOURS, SHAPES, ShapesDataset, class_name, render_shapes

__all__ = [
    "COLOURS",
    "SHAPES",
    "ShapesDataset",
    "class_name",
    "create_dataset",
    "dataset_info",
    "render_shapes",
]


def __getattr__(name):
    # Lazy: the pipeline module imports grain.
    if name in ("create_dataset", "dataset_info"):
        from nag_jax.data import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'nag_jax.data' has no attribute {name!r}")
