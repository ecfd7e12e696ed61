"""TensorBoard writer (clu) and the training progress line.

The console gets one progress line per report (``Progress.line``)::

    step 200/600 (33.3%) | 41.2 steps/s, 2637 examples/s | ETA 0:00:10 | loss 0.4123 ...

TensorBoard gets every scalar (loss, the NAG dropout branches' losses, grad norm, learning rate,
steps/s, ...), the sample grids and the flattened config as hparams, through clu's
``SummaryWriter``. It needs TensorFlow (``pip install 'nag_jax[data]'``, or Colab's own); TF is
imported through ``nag_jax.utils.import_tensorflow`` (its GPUs hidden), lazily, so the core
package imports without it.
"""

from __future__ import annotations

import collections
import contextlib
import math
import time

from absl import logging


class _NoWriter:
    """TensorBoard off (config.train.tensorboard=False, processes > 0, or no TensorFlow)."""

    def write_scalars(self, step, scalars):
        pass

    def write_images(self, step, images):
        pass

    def write_hparams(self, hparams):
        pass

    def flush(self):
        pass

    def close(self):
        pass


def create_writer(workdir: str, *, just_logging: bool = False, tensorboard: bool = True):
    """clu's TensorBoard ``SummaryWriter`` on ``workdir`` (write_scalars / write_images /
    write_hparams / flush / close), or a writer that drops everything when ``tensorboard`` is off,
    ``just_logging`` (processes > 0) or TensorFlow is missing (one warning line naming the extra).
    The console output is the caller's (``Progress.line``), not the writer's."""
    if just_logging or not tensorboard:
        return _NoWriter()
    from nag_jax.errors import MissingDependencyError
    from nag_jax.utils import import_tensorflow

    try:
        import_tensorflow("TensorBoard event files")
    except MissingDependencyError as e:
        logging.warning("%s; or set --config.train.tensorboard=False. TensorBoard is off.", e)
        return _NoWriter()
    from clu import metric_writers

    return metric_writers.SummaryWriter(str(workdir))


def flat_hparams(config) -> dict:
    """The config as TensorBoard hparams: ``{"optim.lr": 1e-4, "model.name": "SiT-XL/2", ...}``;
    values are bool / int / float / str (None and tuples as their text)."""
    from flax import traverse_util

    flat = traverse_util.flatten_dict(config.to_dict(), sep=".")
    return {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in flat.items()}


def format_duration(seconds: float) -> str:
    """``h:mm:ss`` (seconds rounded up, so a nonzero ETA never shows as 0:00:00)."""
    s = max(0, math.ceil(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class Progress:
    """Training progress between reports, as clu's ReportProgress but excluding side work.

    ``steps_per_sec`` and ``examples_per_sec`` count only training time: the wall time of the
    interval minus the time spent inside ``with progress.excluded(name):`` blocks (sampling,
    evaluation, checkpoints). ``eta_seconds`` is the remaining steps at the interval's wall-clock
    pace (side work included, since it recurs): ``(num_steps - step) * wall / steps``.

    ``clock`` (seconds, monotonic) is injectable for tests.
    """

    def __init__(
        self, num_steps: int, global_batch_size: int, start_step: int = 0, clock=time.perf_counter
    ):
        self.num_steps = int(num_steps)
        self.batch = int(global_batch_size)
        self._clock = clock
        self.reset(start_step)

    def reset(self, step: int) -> None:
        """Restarts the interval at ``step`` (after the first, compiling step)."""
        self._t, self._step = self._clock(), int(step)
        self._excluded = collections.defaultdict(float)

    @contextlib.contextmanager
    def excluded(self, name: str):
        """Time spent in this block is left out of steps/s (and reported by name)."""
        t0 = self._clock()
        try:
            yield
        finally:
            self._excluded[name] += self._clock() - t0

    def __call__(self, step: int) -> dict[str, float]:
        """Rates over the interval since the last report (then a new interval starts); {} when
        no step was timed yet (a report right after the compiling step)."""
        now = self._clock()
        steps, wall = int(step) - self._step, now - self._t
        excluded = dict(self._excluded)
        if steps <= 0:
            return {}
        self._t, self._step = now, int(step)
        self._excluded = collections.defaultdict(float)
        train_s = max(wall - sum(excluded.values()), 1e-9)
        sps = steps / train_s
        report = {
            "steps_per_sec": sps,
            "examples_per_sec": sps * self.batch,
            "eta_seconds": (self.num_steps - int(step)) * max(wall, 1e-9) / steps,
        }
        report.update({f"seconds_{k}": v for k, v in excluded.items()})
        return report

    def line(self, step: int, report: dict, scalars: dict) -> str:
        """The console line: k/N, %, rates, ETA, loss (with the NAG branches), grad norm, lr."""
        parts = [f"step {step}/{self.num_steps} ({100.0 * step / max(self.num_steps, 1):.1f}%)"]
        if report:
            parts.append(
                f"{report['steps_per_sec']:.3g} steps/s, {report['examples_per_sec']:.4g} "
                "examples/s"
            )
            parts.append(f"ETA {format_duration(report['eta_seconds'])}")
        if "loss" in scalars:
            # The NAG branches (noise condition kept / dropped); a branch absent from the batch
            # (frac_drop_noise 0 or 1) has no loss to show.
            frac = scalars.get("frac_drop_noise", 0.5)
            branches = [
                f"noise {name} {scalars[key]:.4f}"
                for name, key, present in (
                    ("kept", "loss_noise_kept", frac < 1),
                    ("dropped", "loss_noise_dropped", frac > 0),
                )
                if key in scalars and present
            ]
            loss = f"loss {scalars['loss']:.4f}"
            parts.append(loss + (f" ({', '.join(branches)})" if branches else ""))
        if "grad_norm" in scalars:
            parts.append(f"grad_norm {scalars['grad_norm']:.3g}")
        if "lr" in scalars:
            parts.append(f"lr {scalars['lr']:.3g}")
        side = {k[len("seconds_") :]: v for k, v in report.items() if k.startswith("seconds_")}
        if side:
            parts.append("excluded " + ", ".join(f"{k} {v:.1f}s" for k, v in sorted(side.items())))
        return " | ".join(parts)
