"""Evaluation: the FID Inception in Flax, FID / sFID / IS / precision-recall (metrics), the
demo's quality proxy (a shapes classifier), and mode "eval" split by job: eval_job (sample N
images -> score -> one row), store (resumable chunks -> ADM .npz), results (rows and files),
evaluators (extractor, reference, ``from_config``: the trainer's FID callables). Image identity
and the batch sampler live in nag_jax.sampling.generate; evaluation never imports training's
loop."""
