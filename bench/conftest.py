"""Benchmark session setup: one thread count for every library, recorded context.

BENCH_THREADS (default os.cpu_count()) caps BLAS/OpenMP pools (threadpoolctl)
and torch. The machine and installation go into the JSON's machine_info (from
fastlstm.bench.machine, the same facts every report records); what changes from
run to run (the command, how busy the machine was) goes into the JSON's
``fastlstm_run`` entry, so that --benchmark-compare compares like with like.
"""

import os
import sys

import pytest

from fastlstm.bench import machine as bench_machine

BENCH_THREADS = int(os.environ.get("BENCH_THREADS") or os.cpu_count() or 1)
_LOAD = bench_machine.MachineLoad()  # other processes' CPU time: a busy machine makes timings meaningless

try:
    import torch
except ImportError:  # torch is optional: its benchmarks skip
    torch = None

try:
    import threadpoolctl
except ImportError:
    threadpoolctl = None


@pytest.fixture(scope="session", autouse=True)
def bench_threads():
    """Same thread count for our BLAS/OpenMP and for torch, for the whole session."""
    _LOAD.start()
    if torch is not None:
        torch.set_num_threads(BENCH_THREADS)
    if threadpoolctl is None:
        yield BENCH_THREADS
        return
    with threadpoolctl.threadpool_limits(limits=BENCH_THREADS):
        yield BENCH_THREADS


def _extension_hash():
    """A short hash of the C extension that was timed (two builds compare apart)."""
    import hashlib

    from fastlstm.backends import _load

    c = _load("c")
    if c is None or not getattr(c, "__file__", None):
        return None
    with open(c.__file__, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()[:16]


def pytest_benchmark_update_machine_info(config, machine_info):
    try:
        info = bench_machine.machine_info()
    except Exception as exc:  # the report is context, never a reason to fail
        info = {"error": repr(exc)}
    info["bench_threads"] = BENCH_THREADS
    info["torch_threads"] = torch.get_num_threads() if torch is not None else None
    info["c_extension_sha256"] = _extension_hash()
    machine_info["fastlstm_bench"] = info


def pytest_benchmark_update_json(config, benchmarks, output_json):
    output_json["fastlstm_run"] = {
        "command": " ".join(["python", "-m", "pytest", *config.invocation_params.args]),
        "python": sys.executable,
        "machine_load": _LOAD.report(),
    }
