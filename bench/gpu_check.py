"""GPU check for sessions lent an NVIDIA GPU: correctness at real sizes and timings
of the cuda backend against PyTorch's cuDNN LSTM on the same card, in one run.

    python bench/gpu_check.py --out bench/GPU_RESULTS.md

One layer, T=100, I=H, float32, H in {256, 512, 1024}, N in {1, 16, 64, 256}.
Correctness: relative 2-norm error of every output and gradient against the
float64 NumPy reference on the same float32 inputs (must be < 1e-5). Timings:
medians of forward and forward+backward with device-resident weights (the
functional API, torch CUDA tensors passed through __cuda_array_interface__),
both time loops (persistent, per step); cuDNN with TF32 off (the same float32
arithmetic) and on (its default). Each timed call gives two numbers: wall time,
synchronised inside the call, and device time between CUDA events recorded just
before and after it (torch's current stream, where fastlstm launches when given
torch tensors; numba's default stream without torch; none under the simulator).
Ratios are given for both. Each main row also says whether the persistent kernel
keeps W_hh in shared memory (cuda.persistent_plan, where the backend has it).

Then torch.nn.LSTM's options (bidirectional, variable lengths) and, with torch on
CUDA, a stream-safety check: inputs and weights made on a non-blocking side stream
behind a long chain of matmuls, forward and backward called there without any
synchronisation, results compared after the stream finishes.

The markdown table (and JSON beside it) is rewritten after every row, so a crash
or a killed run loses at most the row in progress; until the end the file says
"Status: running (incomplete)". Exits 1 when a correctness check fails (a refused
launch counts, and is recorded as a row), 2 when no usable GPU. Budget: about
3 minutes on an H100.
"""

import argparse
import contextlib
import datetime
import importlib.metadata
import json
import os
import platform
import shlex
import statistics
import sys
import time

import numpy as np

HS = (256, 512, 1024)
NS = (1, 16, 64, 256)
T = 100
REL_TOL = 1e-5
LOOPS = ("persistent", "steps")
PLAN_FIELDS = ("blocks", "units", "threads", "use_smem", "smem_bytes")


# ---------------------------------------------------------------- measuring

def rel_err(got, want):
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    den = np.linalg.norm(want)
    return float(np.linalg.norm(got - want) / (den if den else 1.0))


class TorchEvents:
    """Timing events from torch, recorded on torch's current stream."""

    def __init__(self, torch):
        self.torch = torch

    def pair(self):
        return self.torch.cuda.Event(enable_timing=True), self.torch.cuda.Event(enable_timing=True)

    def record(self, event):
        event.record(self.torch.cuda.current_stream())

    def elapsed_s(self, start, end):
        end.synchronize()
        return start.elapsed_time(end) / 1000


class NumbaEvents:
    """Timing events from numba, recorded on the default stream."""

    def __init__(self, cuda):
        self.cuda = cuda

    def pair(self):
        return self.cuda.event(timing=True), self.cuda.event(timing=True)

    def record(self, event):
        event.record()

    def elapsed_s(self, start, end):
        end.synchronize()
        got = self.cuda.event_elapsed_time(start, end)
        return float(got[-1] if isinstance(got, tuple) else got) / 1000


def make_events(cb, torch, have_torch):
    """(events, note): the timing events to use and a line saying which, or (None, why not)."""
    if cb.SIMULATOR:
        return None, "none under the simulator"
    events = TorchEvents(torch) if have_torch else NumbaEvents(cb.cuda)
    where = "torch's current stream" if have_torch else "numba's default stream"
    try:  # one probe: a card or driver without timing events gives wall times only
        start, end = events.pair()
        events.record(start)
        events.record(end)
        if not events.elapsed_s(start, end) >= 0:
            raise RuntimeError("negative elapsed time")
    except Exception as exc:  # diagnostics only
        return None, f"unavailable ({type(exc).__name__}: {exc})"[:200]
    return events, f"recorded on {where}"


def timed(fn, sync, reps, events=None, budget_s=2.0):
    """(wall s, event s or None): medians over reps calls of fn after one warm-up call.

    Wall time includes sync() after each call; event time is the device time between
    events recorded just before and just after the call. Stops early past budget_s
    (after at least 3 calls).
    """
    fn()
    sync()
    walls, devs = [], []
    marks = events.pair() if events else None
    start = time.perf_counter()
    for _ in range(reps):
        t0 = time.perf_counter()
        if marks:
            events.record(marks[0])
        fn()
        if marks:
            events.record(marks[1])
        sync()
        walls.append(time.perf_counter() - t0)
        if marks:
            devs.append(events.elapsed_s(*marks))
        if time.perf_counter() - start > budget_s and len(walls) >= 3:
            break
    return statistics.median(walls), (statistics.median(devs) if devs else None)


class Device:
    """The card as the checks see it: uploads, downloads, synchronisation and timing."""

    def __init__(self, cb, reps):
        try:
            import torch
        except ImportError:
            torch = None
        self.cb, self.reps, self.torch = cb, reps, torch
        self.have_torch = torch is not None and torch.cuda.is_available()
        self.events, self.events_note = make_events(cb, torch, self.have_torch)

    def to_dev(self, a):
        a = np.ascontiguousarray(a)
        return self.torch.from_numpy(a).cuda() if self.have_torch else self.cb.as_device(a)

    def to_host(self, a):
        return a.cpu().numpy() if hasattr(a, "cpu") else self.cb.as_device(a).copy_to_host()

    def sync(self):
        self.cb.cuda.synchronize()
        if self.have_torch:
            self.torch.cuda.synchronize()

    def put_times(self, row, key, fn):
        """row[key] = wall seconds, row[key + "_ev"] = event seconds (None without events)."""
        row[key], row[key + "_ev"] = timed(fn, self.sync, self.reps, self.events)


@contextlib.contextmanager
def cuda_loop(loop):
    """FASTLSTM_CUDA_LOOP set to loop inside the block, restored after."""
    before = os.environ.get("FASTLSTM_CUDA_LOOP")
    os.environ["FASTLSTM_CUDA_LOOP"] = loop
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("FASTLSTM_CUDA_LOOP", None)
        else:
            os.environ["FASTLSTM_CUDA_LOOP"] = before


@contextlib.contextmanager
def cudnn_tf32(torch, on):
    """cuDNN's TF32 switch set inside the block, back to its default (on) after."""
    torch.backends.cudnn.allow_tf32 = on
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = True


def failure(exc):
    return f"{type(exc).__name__}: {exc}"[:300]


# ---------------------------------------------------------------- cases and references

def make_case(H, N, T, seed=0):
    rng = np.random.default_rng(seed)
    k = 1 / np.sqrt(H)
    G = 4 * H
    w = {"weight_ih": rng.uniform(-k, k, (G, H)), "weight_hh": rng.uniform(-k, k, (G, H)),
         "bias_ih": rng.uniform(-k, k, G), "bias_hh": rng.uniform(-k, k, G)}
    w = {name: a.astype(np.float32) for name, a in w.items()}
    x = rng.standard_normal((T, N, H)).astype(np.float32)
    dy = rng.standard_normal((T, N, H)).astype(np.float32)
    return w, x, dy


def forward_backward(x, w, dy, **kw):
    """Every output and gradient of one functional forward and backward, by name."""
    import fastlstm
    y, (h, c), cache = fastlstm.lstm_forward(x, **w, **kw)
    dx, (dh, dc), grads = fastlstm.lstm_backward(cache, dy)
    return {"y": y, "h_n": h, "c_n": c, "dx": dx, "dh0": dh, "dc0": dc,
            **{f"d{k}": g for k, g in grads.items()}}


def reference(w, x, dy):
    w64 = {k: v.astype(np.float64) for k, v in w.items()}
    return forward_backward(x.astype(np.float64), w64, dy.astype(np.float64), backend="numpy")


def ours(w, x, dy, to_dev, to_host):
    got = forward_backward(to_dev(x), {k: to_dev(v) for k, v in w.items()}, to_dev(dy))
    return {k: to_host(v) for k, v in got.items()}


def max_err(got, want):
    return max(rel_err(got[k], want[k]) for k in want)


def package_version(name):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def persistent_kernel_notes(cb):
    """Registers per thread and max cooperative grid per compiled persistent kernel."""
    try:
        from fastlstm.backends._cuda_kernels import kernels
    except Exception as exc:  # diagnostics only
        return [f"- kernels not readable: {failure(exc)}"]
    notes = []
    for dtype in (np.float32, np.float64):
        ks = kernels(np.dtype(dtype))
        for name in ("forward_persistent", "backward_persistent"):
            disp = getattr(ks, name)
            for kern in getattr(disp, "overloads", {}).values():
                try:
                    regs = kern.regs_per_thread if hasattr(kern, "regs_per_thread") else "?"
                    coop = {th: kern.max_cooperative_grid_blocks(th) for th in (256, 512, 1024)}
                except Exception as exc:  # diagnostics only
                    regs, coop = "?", repr(exc)[:200]
                notes.append(f"- {np.dtype(dtype).name} {name}: {regs} registers/thread; "
                             f"max cooperative blocks by threads {coop}")
    return notes


def persistent_plan(cb, N, H, itemsize):
    """The persistent kernel's launch plan as a dict (PLAN_FIELDS), None when there is
    none, {"error": ...} when it cannot be read; "absent" without cb.persistent_plan."""
    plan_of = getattr(cb, "persistent_plan", None)
    if plan_of is None:
        return "absent"
    try:
        with cuda_loop("persistent"):
            plan = plan_of(N, H, itemsize)
    except Exception as exc:  # diagnostics only
        return {"error": failure(exc)}
    if plan is None:
        return None
    if isinstance(plan, tuple) and not hasattr(plan, "use_smem"):  # a plain tuple, in PLAN_FIELDS order
        return dict(zip(PLAN_FIELDS, plan))
    return {f: getattr(plan, f, None) for f in PLAN_FIELDS}


# ---------------------------------------------------------------- the measured rows

def fastlstm_times(dev, row, loop, w, x, dy):
    """Time forward and forward+backward of one loop with device-resident weights."""
    import fastlstm
    dw = {k: dev.to_dev(v) for k, v in w.items()}
    dx_, ddy = dev.to_dev(x), dev.to_dev(dy)

    def fwd():
        fastlstm.lstm_forward(dx_, **dw, training=False)

    def fwd_bwd():
        _, _, cache = fastlstm.lstm_forward(dx_, **dw)
        fastlstm.lstm_backward(cache, ddy)

    dev.put_times(row, f"fwd_{loop}", fwd)
    dev.put_times(row, f"fb_{loop}", fwd_bwd)


def cudnn_times(dev, row, w, x, dy, want):
    """torch.nn.LSTM (cuDNN) with the same weights: its error, and its times with TF32 off and on."""
    torch = dev.torch
    H = x.shape[2]
    lstm = torch.nn.LSTM(H, H).cuda()
    with torch.no_grad():
        for k, v in w.items():
            getattr(lstm, f"{k}_l0").copy_(torch.from_numpy(v))
    tx = dev.to_dev(x).requires_grad_(True)
    tdy = dev.to_dev(dy)

    def t_fwd():
        with torch.no_grad():
            lstm(tx)

    def t_fb():
        y, _ = lstm(tx)
        y.backward(tdy)

    for tag, tf32 in (("fp32", False), ("tf32", True)):
        with cudnn_tf32(torch, tf32):
            if not tf32:
                row["err_cudnn"] = rel_err(lstm(tx)[0].detach().cpu().numpy(), want["y"])
            dev.put_times(row, f"fwd_cudnn_{tag}", t_fwd)
            dev.put_times(row, f"fb_cudnn_{tag}", t_fb)


def add_ratios(row):
    """fastlstm's better loop / cuDNN fp32, by wall time (ratio_*) and by event time (ratio_*_ev)."""
    for kind in ("fwd", "fb"):
        base = row.get(f"{kind}_cudnn_fp32")
        if base:
            row[f"ratio_{kind}"] = min(row[f"{kind}_{loop}"] for loop in LOOPS) / base
        evs = [row.get(f"{kind}_{loop}_ev") for loop in LOOPS]
        evs = [v for v in evs if v is not None]
        base_ev = row.get(f"{kind}_cudnn_fp32_ev")
        if evs and base_ev:
            row[f"ratio_{kind}_ev"] = min(evs) / base_ev


def main_row(dev, H, N, T):
    """One point of the main table: both loops' errors and times, cuDNN's, ratios, the smem plan."""
    w, x, dy = make_case(H, N, T)
    row = {"H": H, "N": N, "T": T, "I": H, "plan": persistent_plan(dev.cb, N, H, x.itemsize)}
    want = reference(w, x, dy)
    for loop in LOOPS:
        with cuda_loop(loop):
            try:
                row[f"err_{loop}"] = max_err(ours(w, x, dy, dev.to_dev, dev.to_host), want)
                fastlstm_times(dev, row, loop, w, x, dy)
            except Exception as exc:  # a refused launch is a finding: record it, go on
                row[f"err_{loop}"] = failure(exc)
                for kind in ("fwd", "fb"):
                    row[f"{kind}_{loop}"], row[f"{kind}_{loop}_ev"] = float("inf"), None
                print(f"H={H} N={N} {loop}: {row[f'err_{loop}']}", flush=True)
    if dev.have_torch:
        try:
            cudnn_times(dev, row, w, x, dy, want)
        except Exception as exc:  # the comparison is lost, not fastlstm's numbers
            row["err_cudnn"] = failure(exc)
    add_ratios(row)
    return row


def option_row(dev, name, kw, lens, H, N, T, rng):
    """One torch.nn.LSTM option through fastlstm.LSTM on the cuda backend (see option_rows)."""
    import fastlstm
    gpu = fastlstm.LSTM(H, H, backend="cuda", seed=0, **kw)
    ref = fastlstm.LSTM(H, H, dtype=np.float64, backend="numpy", **kw)
    ref.load_state_dict({k: v.astype(np.float64) for k, v in gpu.state_dict().items()})
    D = 2 if kw else 1
    x = rng.standard_normal((T, N, H)).astype(np.float32)
    dy = rng.standard_normal((T, N, D * H)).astype(np.float32)
    row = {"case": f"{name} H={H} N={N} T={T}"}
    try:
        got, want = {}, {}
        for layer, out, dt in ((gpu, got, np.float32), (ref, want, np.float64)):
            y, (h, c) = layer.forward(x.astype(dt), lengths=lens, training=True)
            dx, _ = layer.backward(dy.astype(dt))
            out.update(y=y, h=h, c=c, dx=dx, **{f"d{k}": g.copy() for k, g in layer.grads.items()})
        row["err"] = max_err(got, want)
        dx_, ddy = dev.to_dev(x), dev.to_dev(dy)

        def fwd_bwd():
            gpu.forward(dx_, lengths=lens, training=True)
            gpu.backward(ddy)

        dev.put_times(row, "fwd", lambda: gpu.forward(dx_, lengths=lens))
        dev.put_times(row, "fb", fwd_bwd)
    except Exception as exc:  # recorded as the row's finding
        row["err"] = failure(exc)
        return row
    if dev.have_torch:
        try:
            cudnn_option_times(dev, row, gpu, kw, lens, x, dy, T)
        except Exception as exc:  # the comparison is lost, not fastlstm's numbers
            row["err_cudnn"] = failure(exc)
    return row


def cudnn_option_times(dev, row, gpu, kw, lens, x, dy, T):
    """torch's bidirectional / packed cuDNN LSTM with gpu's weights, TF32 off."""
    torch = dev.torch
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
    H = x.shape[2]
    m = torch.nn.LSTM(H, H, **kw).cuda()
    m.load_state_dict({k: torch.from_numpy(v) for k, v in gpu.state_dict().items()})
    tx = dev.to_dev(x).requires_grad_(True)
    tdy = dev.to_dev(dy)
    tlens = None if lens is None else torch.from_numpy(lens)

    def t_run():
        if tlens is None:
            return m(tx)[0]
        out, _ = m(pack_padded_sequence(tx, tlens, enforce_sorted=False))
        return pad_packed_sequence(out, total_length=T)[0]

    def t_fwd():
        with torch.no_grad():
            t_run()

    with cudnn_tf32(torch, False):
        dev.put_times(row, "fwd_cudnn_fp32", t_fwd)
        dev.put_times(row, "fb_cudnn_fp32", lambda: t_run().backward(tdy))


def option_rows(dev, H, N, T):
    """One bidirectional layer and one batch of variable lengths (uniform in [1, T]) through
    fastlstm.LSTM on the cuda backend: the relative error of outputs and gradients against
    the float64 reference, and times against torch's bidirectional / packed cuDNN LSTM.
    The layer keeps its weights on the host, so each call also uploads them. Yields rows."""
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, T + 1, N)
    for name, kw, lens in (("bidirectional", dict(bidirectional=True), None), ("lengths", {}, lengths)):
        yield option_row(dev, name, kw, lens, H, N, T, rng)


def late_on_stream(torch, arrays, size=4096, rounds=16, device="cuda"):
    """Upload arrays on torch's current stream, then make each depend on a long chain of
    matmuls on that stream (its result times 0, added), so that none is ready until the
    stream gets there. The values are exactly the host's (x + 0 = x; tanh keeps it finite)."""
    up = {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in arrays.items()}
    a = torch.rand(size, size, device=device) * 2 - 1
    for _ in range(rounds):
        a = torch.tanh(a @ a / size)
    zero = a.mean() * 0
    return {k: t + zero for k, t in up.items()}


def stream_check(dev, H, N, T):
    """Forward and backward on a non-blocking side stream whose inputs are not ready yet,
    with no synchronisation in between: fastlstm must launch on torch's current stream.
    The row's err is the largest relative error against the float64 reference."""
    torch = dev.torch
    w, x, dy = make_case(H, N, T, seed=3)
    want = reference(w, x, dy)
    row = {"case": f"stream H={H} N={N} T={T}"}
    s = torch.cuda.Stream()
    try:
        with torch.cuda.stream(s):
            d = late_on_stream(torch, {"x": x, "dy": dy, **w})
            got = forward_backward(d["x"], {k: d[k] for k in w}, d["dy"])
            row["busy_at_sync"] = not s.query()  # True: the inputs were still being made
        s.synchronize()
        row["err"] = max_err({k: dev.to_host(v) for k, v in got.items()}, want)
    except Exception as exc:  # recorded as the row's finding
        row["err"] = failure(exc)
    return row


# ---------------------------------------------------------------- the results file

def fmt_ms(v):
    return f"{1000 * v:.3f}" if isinstance(v, float) else "-"


def fmt_err(v):
    return f"{v:.1e}" if isinstance(v, float) else ("refused" if v else "-")


def fmt_ratio(v):
    return f"{v:.2f}" if isinstance(v, float) else "-"


def fmt_smem(plan):
    """"128" (KiB of W_hh in shared memory), "off", "none" (no persistent plan), "?" or "-"."""
    if plan == "absent":
        return "-"
    if plan is None:
        return "none"
    if "error" in plan:
        return "?"
    return f"{plan['smem_bytes'] / 1024:g}" if plan.get("use_smem") and plan.get("smem_bytes") else "off"


def row_name(row):
    return row["case"] if "case" in row else f"H={row['H']} N={row['N']}"


def ok(err):
    return isinstance(err, float) and err < REL_TOL


TIMES = (("fwd persistent", "fwd_persistent"), ("fwd steps", "fwd_steps"), ("fwd cuDNN fp32", "fwd_cudnn_fp32"),
         ("fwd+bwd persistent", "fb_persistent"), ("fwd+bwd steps", "fb_steps"),
         ("fwd+bwd cuDNN fp32", "fb_cudnn_fp32"), ("fwd+bwd cuDNN tf32", "fb_cudnn_tf32"))
OPTION_TIMES = (("fwd", "fwd"), ("fwd cuDNN", "fwd_cudnn_fp32"), ("fwd+bwd", "fb"),
                ("fwd+bwd cuDNN", "fb_cudnn_fp32"))


def table(columns, rows):
    """Markdown table lines; columns are (title, cell(row) -> str)."""
    lines = ["| " + " | ".join(title for title, _ in columns) + " |", "|" + "---|" * len(columns)]
    return lines + ["| " + " | ".join(cell(r) for _, cell in columns) + " |" for r in rows]


def col(title, key, fmt):
    return title, lambda r: fmt(r.get(key))


def main_tables(rows):
    """The wall-time table (errors, smem plan, times, ratios) and the event-time table."""
    hn = [col("H", "H", str), col("N", "N", str)]
    wall = hn + [("smem KiB", lambda r: fmt_smem(r.get("plan"))), col("err persistent", "err_persistent", fmt_err),
                 col("err steps", "err_steps", fmt_err)]
    wall += [col(f"{title} ms", key, fmt_ms) for title, key in TIMES]
    wall += [col("ratio fwd", "ratio_fwd", fmt_ratio), col("ratio fwd+bwd", "ratio_fb", fmt_ratio)]
    ev = hn + [col(f"{title} ms (events)", key + "_ev", fmt_ms) for title, key in TIMES]
    ev += [col("ratio fwd (events)", "ratio_fwd_ev", fmt_ratio),
           col("ratio fwd+bwd (events)", "ratio_fb_ev", fmt_ratio)]
    return table(wall, rows), table(ev, rows)


def option_table(rows):
    columns = [col("case", "case", str), col("err", "err", fmt_err)]
    columns += [col(f"{title} ms", key, fmt_ms) for title, key in OPTION_TIMES]
    columns += [col(f"{title} ms (events)", key + "_ev", fmt_ms) for title, key in OPTION_TIMES]
    return table(columns, rows)


def stream_table(rows):
    busy = {True: "yes", False: "no (check weaker)", None: "-"}
    return table([col("case", "case", str), col("err", "err", fmt_err),
                  ("stream busy at sync", lambda r: busy[r.get("busy_at_sync")])], rows)


class ResultsFile:
    """The markdown results file and its JSON twin, rewritten (atomically) after every row.

    Sections: rows (main table), options, stream. Until finish() the markdown opens
    with a "Status: running (incomplete)" line; abort() says what stopped the run.
    """

    SECTIONS = ("rows", "options", "stream")

    def __init__(self, path, meta, stream_note=""):
        self.path = path
        self.json_path = os.path.splitext(path)[0] + ".json"
        self.meta = meta  # card, date, versions, command, T, events
        self.stream_note = stream_note
        self.sections = {name: [] for name in self.SECTIONS}
        self.kernel_notes = []
        self.status = "running"
        self.started = time.time()
        self.elapsed = 0.0

    def count(self):
        return sum(len(rows) for rows in self.sections.values())

    @property
    def failed(self):
        main = [r[f"err_{loop}"] for r in self.sections["rows"] for loop in LOOPS]
        rest = [r["err"] for name in ("options", "stream") for r in self.sections[name]]
        return not all(ok(e) for e in main + rest)

    def add(self, section, row):
        self.sections[section].append(row)
        print(json.dumps({k: (round(v, 7) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
        self.write()

    def finish(self, kernel_notes):
        self.kernel_notes = kernel_notes
        self.status = "done"
        self.write()

    def abort(self, exc):
        self.status = f"aborted by {type(exc).__name__}{f': {exc}' if str(exc) else ''}"[:300]
        self.write()

    def markdown(self):
        m = self.meta
        n = self.count()
        lines = [f"# GPU check: fastlstm cuda backend vs PyTorch cuDNN ({m['date']})", ""]
        if self.status != "done":
            lines += [f"Status: {self.status} (incomplete), {n} row{'s' if n != 1 else ''} so far", ""]
        lines += [
            f"- Card: {m['card']}",
            f"- {m['versions']}",
            f"- Command: `{m['command']}` ({self.elapsed:.0f} s)",
            f"- One layer, T={m['T']}, I=H, float32; weights on the device (functional API). Errors: relative "
            "2-norm error of every output and gradient against the float64 NumPy reference (threshold 1e-5). "
            "Times: medians; wall time synchronised inside each timed call, and device time between CUDA "
            f"events recorded before and after each call (events: {m['events']}). Ratio = fastlstm's better "
            "loop / cuDNN fp32 (TF32 off), by wall time and by event time. smem KiB: W_hh in the persistent "
            "kernel's shared memory (off: read from global memory; -: not reported by this build).",
            ""]
        wall, ev = main_tables(self.sections["rows"])
        lines += wall + ["", "Device time between CUDA events, same calls:", ""] + ev
        lines += ["", "torch.nn.LSTM's options on the cuda backend (fastlstm.LSTM, weights uploaded each call; "
                  "cuDNN with TF32 off, packed for lengths uniform in [1, T]):", ""]
        lines += option_table(self.sections["options"])
        lines += ["", "Stream safety (inputs and weights made on a non-blocking side stream behind a chain of "
                  "matmuls; forward and backward there without synchronisation; compared after the stream "
                  "synchronises):", ""]
        lines += stream_table(self.sections["stream"]) if self.sections["stream"] else [self.stream_note]
        if self.kernel_notes:
            lines += ["", "Persistent kernels as compiled (registers per thread, cooperative blocks "
                      "the device allows at the block sizes used):", ""] + self.kernel_notes
        lines += [f"- H={r['H']} N={r['N']} {loop}: {r[f'err_{loop}']}" for r in self.sections["rows"]
                  for loop in LOOPS if isinstance(r[f"err_{loop}"], str)]
        lines += [f"- {r['case']}: {r['err']}" for name in ("options", "stream")
                  for r in self.sections[name] if isinstance(r["err"], str)]
        lines += [f"- {row_name(r)} cuDNN: {r['err_cudnn']}" for name in ("rows", "options")
                  for r in self.sections[name] if isinstance(r.get("err_cudnn"), str)]
        if self.status == "done":
            lines += ["", "Correctness: " + ("FAILED (an error above 1e-5)" if self.failed else "all below 1e-5")]
        return "\n".join(lines) + "\n"

    def as_json(self):
        m = self.meta
        return {"card": m["card"], "date": m["date"], "status": self.status, "rows_so_far": self.count(),
                "elapsed_s": self.elapsed, "events": m["events"], **self.sections,
                "failed": self.failed, "kernel_notes": self.kernel_notes}

    def write(self):
        self.elapsed = time.time() - self.started
        for path, text in ((self.path, self.markdown()), (self.json_path, json.dumps(self.as_json(), indent=1))):
            tmp = path + ".tmp"
            with open(tmp, "w") as fh:
                fh.write(text if text.endswith("\n") else text + "\n")
            os.replace(tmp, path)


# ---------------------------------------------------------------- the run

def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="bench/GPU_RESULTS.md", help="markdown results file (JSON beside it)")
    ap.add_argument("--reps", type=int, default=20, help="timed repetitions per point (median)")
    ap.add_argument("--hs", type=int, nargs="+", default=list(HS), help="hidden sizes")
    ap.add_argument("--ns", type=int, nargs="+", default=list(NS), help="batch sizes")
    ap.add_argument("--steps", type=int, default=T, help="sequence length T")
    ap.add_argument("--allow-simulator", action="store_true",
                    help="run under NUMBA_ENABLE_CUDASIM (a smoke test of this script, tiny sizes only)")
    return ap.parse_args(argv)


def run_checks(dev, args, results):
    """Every row, each written to the results file as soon as it is measured."""
    for H in args.hs:
        for N in args.ns:
            results.add("rows", main_row(dev, H, N, args.steps))
    # The options and the stream check at the second H and third N given (512, 64 by default).
    H, N = args.hs[min(1, len(args.hs) - 1)], args.ns[min(2, len(args.ns) - 1)]
    for row in option_rows(dev, H, N, args.steps):
        results.add("options", row)
    if dev.have_torch:
        results.add("stream", stream_check(dev, H, N, args.steps))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)

    import fastlstm
    if "cuda" not in fastlstm.available_backends():
        print("cuda backend not available:", fastlstm.backends.unavailable_reasons().get("cuda"))
        return 2
    from fastlstm.backends import cuda as cb
    if cb.SIMULATOR and not args.allow_simulator:
        print("NUMBA_ENABLE_CUDASIM is set: this check needs a real GPU")
        return 2
    dev = Device(cb, args.reps)
    torch = dev.torch
    card = cb.device_info()
    print("device:", card, "| torch:", torch.__version__ if torch else "absent",
          "| events:", dev.events_note, flush=True)
    meta = {"card": card, "date": datetime.date.today().isoformat(), "T": args.steps,
            "events": dev.events_note, "command": shlex.join(["python", "bench/gpu_check.py", *argv]),
            "versions": f"fastlstm {fastlstm.__version__}, numba-cuda {package_version('numba-cuda')}, "
                        f"NumPy {np.__version__}, torch {torch.__version__ if torch else 'absent'}, "
                        f"Python {platform.python_version()}"}
    results = ResultsFile(args.out, meta, stream_note="Skipped: torch with CUDA not available.")
    results.write()
    try:
        run_checks(dev, args, results)
    except BaseException as exc:  # the file keeps the rows so far and says what stopped the run
        results.abort(exc)
        raise
    kernel_notes = persistent_kernel_notes(cb)
    print("\n".join(kernel_notes), flush=True)
    results.finish(kernel_notes)
    print(results.markdown())
    return 1 if results.failed else 0


if __name__ == "__main__":
    sys.exit(main())
