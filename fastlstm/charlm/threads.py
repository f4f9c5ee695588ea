"""The trainer's BLAS thread policy: while ``fastlstm train`` runs, which BLAS libraries keep
their worker threads (FASTLSTM_TRAIN_BLAS, read through ``fastlstm._config``). The run loop
enters ``compute_threads()`` around its steps; benchmarks of the trainer do the same.
"""

import contextlib
import os

import numpy as np

from .. import _config

__all__ = ["compute_threads"]


@contextlib.contextmanager
def compute_threads(mode=None):
    """Thread settings for the training loop (needs threadpoolctl; a no-op without it).

    The LSTM kernels run on their own OpenMP threads (with BLAS calls kept on each thread);
    BLAS worker threads (numpy's for the dense layer, SciPy's) would spin on the same cores.
    ``mode`` (default $FASTLSTM_TRAIN_BLAS, else "all1"): "all1" limits every BLAS to one
    thread; "numpy1" only numpy's, when it is a different library from SciPy's; "none" changes
    nothing. On the 2-CPU machines here "all1" measured fastest (about 305-380 ms per default
    step against 330-420 for "numpy1" and 390-500 for "none"; noisy, shared machine).
    """
    if mode is None:
        mode = _config.train_blas()
    elif mode not in _config.TRAIN_BLAS_MODES:
        raise ValueError(f"the {_config.TRAIN_BLAS_ENV} mode must be one of "
                         f"{', '.join(_config.TRAIN_BLAS_MODES)}, got {mode!r}")
    try:
        import threadpoolctl
    except ImportError:
        yield
        return
    if mode == "none":
        yield
        return
    if mode == "all1":
        with threadpoolctl.threadpool_limits(1, user_api="blas"):
            yield
        return
    controller = threadpoolctl.ThreadpoolController()
    np_dir = os.path.dirname(os.path.dirname(os.path.abspath(np.__file__)))
    mine = [lib for lib in controller.lib_controllers
            if lib.user_api == "blas" and os.path.abspath(lib.filepath).startswith(os.path.join(np_dir, "numpy"))]
    others = [lib for lib in controller.lib_controllers if lib.user_api == "blas" and lib not in mine]
    if not mine or any(os.path.samefile(m.filepath, o.filepath) for m in mine for o in others):
        yield  # numpy shares its BLAS with the kernels: leave it alone
        return
    before = [lib.num_threads for lib in mine]
    for lib in mine:
        lib.set_num_threads(1)
    try:
        yield
    finally:
        for lib, n in zip(mine, before, strict=True):
            lib.set_num_threads(n)
