"""What every benchmark report records and how every benchmark times a call:
machine_info() (CPU, cores, versions, fastlstm's kernel path, the BLAS kernels
and the environment variables that change them) and the timing helpers
(round_times, median_time, paired_medians, MachineLoad) and append_section for the results files. Used by
`python -m fastlstm.bench`, bench/conftest.py and the scripts in bench/.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

#: Environment variables that change what a benchmark measures.
ENV_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
            "FASTLSTM_BACKEND", "FASTLSTM_KERNEL", "FASTLSTM_NUM_THREADS")
_LSCPU_KEYS = ("Model name", "CPU(s)", "Thread(s) per core", "Core(s) per socket", "Socket(s)",
               "L2 cache", "L3 cache", "Hypervisor vendor")


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def lscpu() -> dict[str, str]:
    """A few lines of `lscpu` (empty where there is none)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    info = {}
    for line in out.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in _LSCPU_KEYS:
            info[key.strip()] = value.strip()
    return info


def _version(module: str) -> str | None:
    mod = sys.modules.get(module)
    if mod is None:
        try:
            mod = __import__(module)
        except ImportError:
            return None
    return getattr(mod, "__version__", None)


def machine_info() -> dict[str, Any]:
    """The facts a benchmark figure depends on, the same for every run on this machine
    and installation (nothing per run: pytest-benchmark compares these between runs)."""
    import fastlstm
    from fastlstm import _info

    cfg = _info.config()
    info: dict[str, Any] = {
        "cpu": cpu_name(), "cores": os.cpu_count(), "lscpu": lscpu(),
        "platform": platform.platform(),
        "versions": {"python": platform.python_version(), "numpy": _version("numpy"),
                     "scipy": _version("scipy"), "fastlstm": fastlstm.__version__,
                     "torch": _version("torch"), "pytest-benchmark": _version("pytest_benchmark")},
        "backends": cfg.get("backends"),
        "c_backend": {k: v for k, v in cfg.items() if k.startswith("c_")},
        "env": {k: os.environ.get(k, "unset") for k in ENV_VARS},
    }
    blas = cfg.get("blas")
    if isinstance(blas, list):
        info["blas"] = [{k: b.get(k) for k in ("internal_api", "version", "architecture", "num_threads")}
                        for b in blas]
        info["openblas"] = "; ".join(f"{b.get('version')} {b.get('architecture')}" for b in blas
                                     if b.get("internal_api") == "openblas")
    return info


# -- timing ---------------------------------------------------------------------
def round_times(fn: Callable[[], Any], budget_s: float, min_rounds: int = 3,
                max_rounds: int = 50) -> list[float]:
    """Times of fn over as many rounds as fit in budget_s (within the bounds), after a warm-up."""
    fn()  # warm-up
    t0 = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t0, 1e-6)
    rounds = int(min(max_rounds, max(min_rounds, budget_s / one)))
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def median_time(fn: Callable[[], Any], budget_s: float, min_rounds: int = 3, max_rounds: int = 50) -> float:
    return statistics.median(round_times(fn, budget_s, min_rounds, max_rounds))


#: Pause before each timed call of paired_medians: the thread pools of the
#: library timed just before (OpenMP, OpenBLAS) spin for a while after a
#: call and would take cores from the next one.
PAUSE_S = 0.005


def paired_medians(fns: list[Callable[[], Any]], budget_s: float, min_rounds: int = 5,
                   max_rounds: int = 60) -> list[float]:
    """Median time of each function, timed in alternating rounds (a b, b a, ...)
    so that a slow stretch of a shared machine falls on all of them alike."""
    for fn in fns:
        fn()  # warm-up
    one = 0.0
    for fn in fns:
        t0 = time.perf_counter()
        fn()
        one += time.perf_counter() - t0
    rounds = int(min(max_rounds, max(min_rounds, budget_s * len(fns) / max(one, 1e-6))))
    times: list[list[float]] = [[] for _ in fns]
    for r in range(rounds):
        order = range(len(fns)) if r % 2 == 0 else reversed(range(len(fns)))
        for i in order:
            time.sleep(PAUSE_S)
            t0 = time.perf_counter()
            fns[i]()
            times[i].append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def append_section(path, title: str, script: str, text: str) -> None:
    """Append a results section to the markdown file ``path``, starting the file (its
    title and a line saying which script appends to it) when it does not exist."""
    from pathlib import Path
    path = Path(path)
    head = "" if path.exists() else f"# {title}\n\nAppended by {script}; newest last.\n\n"
    with open(path, "a") as fh:
        fh.write(head + text + "\n")


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


class MachineLoad:
    """How busy other processes kept the machine between start() and report():
    a shared machine disturbs timings, so every report says how shared it was."""

    def __init__(self) -> None:
        self._start = None
        self._loadavg = None

    def start(self) -> None:
        self._start = _cpu_seconds()
        self._loadavg = os.getloadavg()

    def report(self) -> dict[str, Any] | None:
        end = _cpu_seconds()
        if self._start is None or end is None:
            return None
        wall = end[0] - self._start[0]
        foreign = max(0.0, (end[1] - self._start[1]) - (end[2] - self._start[2]))
        return {"wall_s": round(wall, 1), "foreign_cpu_s": round(foreign, 1),
                "foreign_share": round(foreign / (wall * (os.cpu_count() or 1)), 3) if wall > 0 else None,
                "loadavg_start": self._loadavg, "loadavg_end": os.getloadavg()}
