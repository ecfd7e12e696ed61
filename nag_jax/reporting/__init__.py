"""Reports of the jobs: statistics over seeds (``stats``), markdown tables (``tables``) and
figures written through ``nag_jax.storage.paths`` (``figures``).

No time convention of its own: axes and tables that show a noise level use the paper's lambda
(1 = pure noise), as the results they are given.
"""
