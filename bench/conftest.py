"""Benchmark session setup: one thread count for every library, recorded context.

BENCH_THREADS (default os.cpu_count()) caps BLAS/OpenMP pools (threadpoolctl)
and torch; the machine, versions and BLAS kernels go into the JSON machine_info.
"""

import os
import platform
import subprocess
import sys
import time

import pytest

_LOAD = {}  # 1/5/15-minute load averages: a busy machine makes timings meaningless
BENCH_THREADS = int(os.environ.get("BENCH_THREADS") or os.cpu_count() or 1)

try:
    import torch
except ImportError:  # torch is optional: its benchmarks skip
    torch = None

try:
    import threadpoolctl
except ImportError:
    threadpoolctl = None


def _cpu_seconds():
    """(wall, CPU seconds busy on the whole machine, CPU seconds of this process), or None."""
    try:
        with open("/proc/stat") as fh:
            fields = [int(v) for v in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    busy = sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)  # minus idle, iowait
    t = os.times()
    return time.monotonic(), busy / os.sysconf("SC_CLK_TCK"), t.user + t.system + t.children_user + t.children_system


def _foreign_cpu():
    """CPU time other processes used while the benchmarks ran (0 on a quiet machine)."""
    start, end = _LOAD.get("cpu_start"), _cpu_seconds()
    if start is None or end is None:
        return None
    wall = end[0] - start[0]
    foreign = max(0.0, (end[1] - start[1]) - (end[2] - start[2]))
    return {"wall_s": round(wall, 1), "foreign_cpu_s": round(foreign, 1),
            "foreign_share": round(foreign / (wall * (os.cpu_count() or 1)), 3) if wall > 0 else None}


@pytest.fixture(scope="session", autouse=True)
def bench_threads():
    """Same thread count for our BLAS/OpenMP and for torch, for the whole session."""
    _LOAD["start"] = os.getloadavg()
    _LOAD["cpu_start"] = _cpu_seconds()
    if torch is not None:
        torch.set_num_threads(BENCH_THREADS)
    if threadpoolctl is None:
        yield BENCH_THREADS
        return
    with threadpoolctl.threadpool_limits(limits=BENCH_THREADS):
        yield BENCH_THREADS


def _lscpu():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    keep = ("Model name", "CPU(s)", "Thread(s) per core", "Core(s) per socket", "Socket(s)",
            "L2 cache", "L3 cache", "Hypervisor vendor")
    info = {}
    for line in out.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in keep:
            info[key.strip()] = value.strip()
    return info


def _versions():
    import numpy
    import scipy

    import fastlstm

    v = {"python": sys.version.split()[0], "numpy": numpy.__version__, "scipy": scipy.__version__,
         "fastlstm": fastlstm.__version__, "fastlstm_backends": fastlstm.available_backends(),
         "torch": torch.__version__ if torch is not None else None}
    try:
        import pytest_benchmark
        v["pytest-benchmark"] = pytest_benchmark.__version__
    except (ImportError, AttributeError):
        pass
    return v


def _fastlstm_config():
    """fastlstm's own report, plus a hash of the C extension that was timed."""
    import hashlib

    from fastlstm import _info
    from fastlstm.backends import _load

    try:
        cfg = _info.config()
    except Exception as exc:  # the report is context, never a reason to fail
        cfg = {"error": repr(exc)}
    c = _load("c")
    if c is not None and getattr(c, "__file__", None):
        with open(c.__file__, "rb") as fh:
            cfg["c_extension_sha256"] = hashlib.sha256(fh.read()).hexdigest()[:16]
    return {k: v for k, v in cfg.items() if isinstance(v, (str, int, float, bool, list, dict, type(None)))}


def pytest_benchmark_update_machine_info(config, machine_info):
    info = {
        "lscpu": _lscpu(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "bench_threads": BENCH_THREADS,
        "versions": _versions(),
        "env": {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OMP_NUM_THREADS",
                                               "OPENBLAS_NUM_THREADS", "BENCH_THREADS", "FASTLSTM_BACKEND")},
        "argv": ["python", "-m", "pytest", *config.invocation_params.args],
        "loadavg": {"start": _LOAD.get("start"), "end": os.getloadavg()},
        "foreign_cpu": _foreign_cpu(),
    }
    if threadpoolctl is not None:
        info["threadpools"] = [
            {k: d.get(k) for k in ("user_api", "internal_api", "version", "architecture",
                                   "threading_layer", "num_threads", "filepath")}
            for d in threadpoolctl.threadpool_info()
        ]
    if torch is not None:
        info["torch_threads"] = torch.get_num_threads()
    info["fastlstm_config"] = _fastlstm_config()
    machine_info["fastlstm_bench"] = info
