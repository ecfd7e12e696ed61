"""Evaluation: the FID Inception in Flax, FID / sFID / IS / precision-recall, the resumable
sample-and-evaluate job, and the built-in demo's quality proxy (a shapes classifier)."""
