"""Fault injection for the multi-process tests (tests/test_multihost_faults.py), loaded by every
Python process whose PYTHONPATH starts with this folder. It acts only in the process that runs
the job (NAG_JAX_SUPERVISED=1, set by nag_jax.main for its child) and only when asked:

  NAG_JAX_FAIL_SAVE=<process id>:<step>   that process's save of that step fails with ENOSPC
                                          (a full local disk on one host of a pod)
"""

import os

_spec = os.environ.get("NAG_JAX_FAIL_SAVE")
if _spec and os.environ.get("NAG_JAX_SUPERVISED") == "1":
    _pid, _step = (int(x) for x in _spec.split(":"))
    if int(os.environ.get("JAX_PROCESS_ID", "0")) == _pid:
        import errno

        from nag_jax.training import checkpoint as _ckpt

        _orig = _ckpt._check_writable

        def _check_writable(mngr, step):
            if step == _step:
                e = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(mngr.directory))
                raise _ckpt.CheckpointSaveError(_ckpt.save_errors.message(mngr.directory, step, e))
            return _orig(mngr, step)

        _ckpt._check_writable = _check_writable
