"""Evaluation: the FID Inception in Flax, FID / sFID / IS / precision-recall (metrics), a small
CNN classifier (classifier) behind the demo's quality proxy (proxy: shapes) and the real-image
scorer (real_scorer: IDX datasets, FID Inception + classifier + high-frequency energy), the
trivial sharpen / noise controls (controls), and the parts of mode "eval" (nag_jax.jobs.eval):
samples (the sample set's identity, resumable sampling), store (resumable chunks -> ADM .npz),
results (rows and files), evaluators (extractor, reference, ``from_config``: the trainer's FID
callables). Image identity and the batch sampler live in nag_jax.sampling.generate; evaluation
never imports training's loop."""
