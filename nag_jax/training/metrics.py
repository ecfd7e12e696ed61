"""Metric writers (console + TensorBoard) and progress reports (steps/s, examples/s, ETA).

clu's ``metric_writers.create_default_writer`` is used when it imports (it needs TensorFlow and
the ``tensorboard`` package). Without them the fallback writes to the console (absl logging) and,
when TensorFlow is importable, TensorBoard event files through ``tf.summary``. TensorFlow is only
imported here, lazily, so the core package imports without it.
"""

from __future__ import annotations

import os
import time

from absl import logging


class _LoggingWriter:
    def write_scalars(self, step, scalars):
        text = ", ".join(f"{k}={float(v):.6g}" for k, v in sorted(scalars.items()))
        logging.info("[%d] %s", step, text)

    def write_images(self, step, images):
        logging.info(
            "[%d] images: %s", step, {k: getattr(v, "shape", None) for k, v in images.items()}
        )

    def write_hparams(self, hparams):
        logging.info("hparams: %s", hparams)

    def flush(self):
        pass

    def close(self):
        pass


class _TFSummaryWriter:
    """TensorBoard event files through TF's core ``tf.summary.write`` (no tensorboard package:
    the scalars/images plugin metadata is attached by hand, as the plugins' own ops do)."""

    def __init__(self, logdir):
        import tensorflow as tf
        from tensorflow.core.framework import summary_pb2

        def metadata(plugin):
            data = summary_pb2.SummaryMetadata.PluginData(plugin_name=plugin)
            return summary_pb2.SummaryMetadata(plugin_data=data).SerializeToString()

        self._tf = tf
        self._md = {"scalars": metadata("scalars"), "images": metadata("images")}
        self._writer = tf.summary.create_file_writer(logdir)

    def write_scalars(self, step, scalars):
        tf = self._tf
        with self._writer.as_default():
            for k, v in scalars.items():
                tf.summary.write(
                    k,
                    tf.constant(float(v), tf.float32),
                    step=int(step),
                    metadata=self._md["scalars"],
                )

    def write_images(self, step, images):
        import io

        import numpy as np
        from PIL import Image

        tf = self._tf
        with self._writer.as_default():
            for k, batch in images.items():
                for i, img in enumerate(np.asarray(batch)):
                    img = img[..., 0] if img.shape[-1] == 1 else img
                    buf = io.BytesIO()
                    Image.fromarray(img.astype(np.uint8)).save(buf, format="PNG")
                    h, w = img.shape[:2]
                    value = tf.constant([str(w).encode(), str(h).encode(), buf.getvalue()])
                    tag = k if len(batch) == 1 else f"{k}/{i}"
                    tf.summary.write(tag, value, step=int(step), metadata=self._md["images"])

    def write_hparams(self, hparams):
        pass

    def flush(self):
        self._writer.flush()

    def close(self):
        self._writer.close()


class _MultiWriter:
    """Fans calls out to several writers; a failing writer is logged and dropped, never fatal."""

    def __init__(self, writers):
        self._writers = list(writers)

    def __getattr__(self, name):
        def call(*args, **kwargs):
            for w in list(self._writers):
                try:
                    getattr(w, name)(*args, **kwargs)
                except Exception as e:  # noqa: BLE001 - metrics must not stop training
                    logging.warning("Metric writer %s failed (%s); disabled.", type(w).__name__, e)
                    self._writers.remove(w)

        return call


def create_writer(workdir: str, *, just_logging: bool = False, tensorboard: bool = True):
    """A writer with write_scalars / write_images / flush / close (TensorBoard under workdir)."""
    if just_logging or not tensorboard:
        return _LoggingWriter()
    try:
        from clu import metric_writers

        return metric_writers.create_default_writer(workdir, just_logging=just_logging)
    except ImportError as e:  # tensorboard package missing: TF's own summary ops still work
        logging.info("clu metric writers unavailable (%s); using tf.summary fallback", e)
    writers = [_LoggingWriter()]
    try:
        writers.append(_TFSummaryWriter(os.path.join(workdir, "tensorboard")))
    except Exception as e:  # noqa: BLE001 - any TF import/setup failure: console only
        logging.warning("TensorBoard summaries disabled (%s)", e)
    return _MultiWriter(writers)


class Progress:
    """Steps/s, examples/s and ETA between reports (what clu's ReportProgress logs)."""

    def __init__(self, num_steps: int, global_batch_size: int, start_step: int = 0):
        self.num_steps = num_steps
        self.batch = global_batch_size
        self._t, self._step = time.perf_counter(), start_step

    def reset(self, step: int) -> None:
        """Restarts the clock at ``step`` (after the first, compiling step)."""
        self._t, self._step = time.perf_counter(), step

    def __call__(self, step: int) -> dict[str, float]:
        now = time.perf_counter()
        dt, ds = max(now - self._t, 1e-9), step - self._step
        if ds <= 0:  # nothing timed yet (e.g. a report right after the compiling step)
            return {}
        self._t, self._step = now, step
        sps = ds / dt
        return {
            "steps_per_sec": sps,
            "examples_per_sec": sps * self.batch,
            "eta_hours": (self.num_steps - step) / max(sps, 1e-9) / 3600.0,
        }
