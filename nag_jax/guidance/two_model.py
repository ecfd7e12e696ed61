"""Two-model guidance: Domain Guidance (DoG) with a second set of weights.

Zhong, Zhang, Wang and Long, "Domain Guidance: a simple transfer approach for a pre-trained
diffusion model", ICLR 2025 (arXiv:2504.01521; code github.com/thuml/DomainGuidance). A model
fine-tuned on a target domain is guided by the PRE-TRAINED model used as the unconditional branch,
in CFG's form:

    eps_DoG = eps_pre(x, t, null) + omega * (eps_ft(x, t, y) - eps_pre(x, t, null))
            = c + (omega - 1) * (c - u_pre),      u_pre = f_pre(x, t, null_y_pre)

(the release replaces CFG's unconditional half by the pre-trained model's call with its null
label; on DiT the variance channels come from the fine-tuned, conditional branch). Here the
pre-trained branch is ``DOMAIN`` and its scale ``dog_scale`` = omega (1 = off), and all terms add
up in one step (`nag_jax.guidance.combine`):

    pred = c + (s_cfg - 1)(c - u_y) + (s_dog - 1)(c - u_pre) + w_nag (c - u_t)

(the paper's Table 2 rows "FT w/ DoG + NAG": DoG with NAG of the fine-tuned model). The domain
branch runs a SECOND set of weights (`TwoModelNet`). When both networks share an architecture
their params are stacked and both run as ONE vmapped call over the params axis (``stacked``),
instead of two sequential calls; the fine-tuned model's rows (cond, and u_y / u_t when on) and
the domain rows (N, repeated to the same count) are the two slices of that call.

Time convention: none of its own; the rows carry the family's model time (SiT float t, 1 = data;
DiT the original step index).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

__all__ = ["DOMAIN", "TwoModelNet"]

DOMAIN = "domain"  # the second (pre-trained) network at the null class: Domain Guidance


@dataclasses.dataclass(frozen=True)
class TwoModelNet:
    """The networks of two-model guidance: the main (fine-tuned) model and a second set of
    weights for the ``DOMAIN`` branch (Domain Guidance's pre-trained model).

    ``apply_fn(params, x, t, y, drop_class, drop_noise) -> (B, ..., C_out)`` is the network of
    both (one architecture); ``params`` the main weights, ``domain_params`` the second ones with
    the same tree structure and shapes when ``stacked`` (build.domain_params_like makes a
    pre-trained tree fit: only its null label row is read).

    ``stacked=True``: the two trees are stacked on a leading axis once (when the prediction is
    built, before the sampler's loop) and each step runs ONE ``vmap`` over that axis: slice 0 the
    main model's rows, slice 1 the domain rows repeated to the same count (k main branches ->
    (k - 1) N padded rows). ``stacked=False``: two sequential calls (main rows, then N domain
    rows).
    """

    apply_fn: Callable
    params: object
    domain_params: object
    stacked: bool = True

    def __post_init__(self):
        if self.stacked:
            a = jax.tree_util.tree_structure(self.params)
            b = jax.tree_util.tree_structure(self.domain_params)
            shapes = lambda t: [jnp.shape(x) for x in jax.tree.leaves(t)]
            if a != b or shapes(self.params) != shapes(self.domain_params):
                raise ValueError(
                    "stacked two-model guidance needs two param trees of one architecture (same "
                    "structure and shapes); adapt the pre-trained tree with "
                    "nag_jax.sampling.build.domain_params_like or use sample.dog_call='sequential'."
                )
            stack = lambda p, q: jnp.stack([p, jnp.asarray(q, jnp.result_type(p))])
            object.__setattr__(
                self, "_stacked", jax.tree.map(stack, self.params, self.domain_params)
            )

    def main(self, *inputs):
        """The main model on stacked branch rows (x, t, y, drop_class, drop_noise)."""
        return self.apply_fn(self.params, *inputs)

    def both(self, main_inputs, domain_inputs):
        """(main outputs (k N, ...), domain outputs (N, ...)) of the two row sets."""
        if not self.stacked:
            return self.main(*main_inputs), self.apply_fn(self.domain_params, *domain_inputs)
        rows, n = main_inputs[0].shape[0], domain_inputs[0].shape[0]
        reps = rows // n
        padded = [jnp.concatenate([a] * reps, axis=0) if reps > 1 else a for a in domain_inputs]
        paired = [jnp.stack([a, b]) for a, b in zip(main_inputs, padded)]
        out = jax.vmap(self.apply_fn)(self._stacked, *paired)
        return out[0], out[1][:n]
