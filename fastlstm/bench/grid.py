"""`python -m fastlstm.bench`: time fastlstm against PyTorch's CPU LSTM and the matmul roof.

Runs the comparison grid at 1 and 2 threads (or
--threads), prints a table of medians and ratios, and writes a markdown
report, a JSON file and a PNG chart of the ratios (matplotlib, if installed).
PyTorch is optional: without it the ratio columns say n/a.
--options runs issue 14's cases instead (options.py: bidirectional, lengths,
projection; at 2 threads unless --threads) and writes OPTIONS.md and options.json.
"""

import argparse
import json
import os
import sys
import time

import numpy as np

import fastlstm

from .machine import machine_info as _machine_info
from .machine import median_time, paired_medians, round_times

# (name, L, H, T, N, I): the tutorial's model and one-layer sizes.
GRID = [(f"tutorial N{n} I{i}", 2, 300, 50, n, i) for n in (1, 30, 128) for i in (1, 64)] + [
    (f"1x{h} N{n}", 1, h, 100, n, h) for h in (128, 512, 1024) for n in (1, 32, 128)]
QUICK = [g for g in GRID if g[0] in ("tutorial N30 I64", "tutorial N128 I64", "1x128 N1", "1x512 N32")]


def forward_flop(L, H, T, N, I):
    """2·T·N·4H·(I_k + H) summed over layers; backward counts twice that."""
    return sum(2 * T * N * 4 * H * ((I if k == 0 else H) + H) for k in range(L))


class Threads:
    """Set the thread count of fastlstm, both OpenBLAS copies and torch at once."""

    def __init__(self, n):
        self.n = n
        self._limits = None

    def __enter__(self):
        os.environ["FASTLSTM_NUM_THREADS"] = str(self.n)
        try:
            from threadpoolctl import threadpool_limits
            self._limits = threadpool_limits(self.n)
        except ImportError:
            pass
        torch = _torch()
        if torch is not None:
            torch.set_num_threads(self.n)
        return self

    def __exit__(self, *exc):
        if self._limits is not None:
            self._limits.restore_original_limits()
        os.environ.pop("FASTLSTM_NUM_THREADS", None)


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


#: Pause after the roof's products: OpenBLAS's threads spin for a while after
#: a threaded call and would take a core from the next timed call.
ROOF_PAUSE_S = 0.3


def roof_gflops(budget_s):
    """float32 matmul 2048² through NumPy's BLAS, its fastest round: the
    machine's practical peak, as little disturbed by other load as it gets."""
    a = np.random.default_rng(0).standard_normal((2048, 2048)).astype(np.float32)
    best = min(round_times(lambda: a @ a, budget_s, min_rounds=5))
    time.sleep(ROOF_PAUSE_S)
    return 2 * 2048 ** 3 / best / 1e9


def fastlstm_cases(L, H, T, N, I, backend):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, N, I)).astype(np.float32)
    dy = rng.standard_normal((T, N, H)).astype(np.float32)
    model = fastlstm.LSTM(I, H, L, backend=backend, seed=0)

    def fwd_bwd():
        model.forward(x, training=True)
        model.backward(dy)
    return model, (lambda: model.forward(x)), fwd_bwd


def torch_cases(model, L, H, T, N, I):
    torch = _torch()
    if torch is None:
        return None, None
    lstm = torch.nn.LSTM(I, H, L)
    lstm.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((T, N, I)).astype(np.float32))
    dy = torch.from_numpy(rng.standard_normal((T, N, H)).astype(np.float32))

    def fwd():
        with torch.no_grad():
            lstm(x)

    def fwd_bwd():
        y, _ = lstm(x.detach().requires_grad_(True))
        y.backward(dy)
    return fwd, fwd_bwd


def step_rate(model, budget_s, torch_model=None):
    """Characters per second of one-step generation at N = 1 with a carried state."""
    x = np.zeros((1, model.input_size), np.float32)
    state = [model.step(x)[1]]

    def ours():
        for _ in range(50):
            _, state[0] = model.step(x, state[0])
    rate = 50 / median_time(ours, budget_s)
    peer = None
    if torch_model is not None:
        torch = _torch()
        xt = torch.zeros((1, 1, model.input_size))
        st = [None]

        def theirs():
            with torch.no_grad():
                for _ in range(50):
                    _, st[0] = torch_model(xt, st[0])
        peer = 50 / median_time(theirs, budget_s)
    return rate, peer


def run(grid, threads, budget_s, backend, log=print):
    torch = _torch()
    rows = []
    for n in threads:
        with Threads(n):
            roof = roof_gflops(budget_s)
            log(f"threads={n}: matmul roof {roof:.0f} GFLOP/s")
            log(header_line())
            first = len(rows)
            for name, L, H, T, N, I in grid:
                model, fwd, fwd_bwd = fastlstm_cases(L, H, T, N, I, backend)
                tfwd, tfwd_bwd = torch_cases(model, L, H, T, N, I)
                flop = forward_flop(L, H, T, N, I)
                row = {"name": name, "threads": n, "L": L, "H": H, "T": T, "N": N, "I": I, "roof": roof}
                if tfwd:
                    row["fwd"], row["torch_fwd"] = paired_medians([fwd, tfwd], budget_s)
                    row["fwd_bwd"], row["torch_fwd_bwd"] = paired_medians([fwd_bwd, tfwd_bwd], budget_s)
                else:
                    row["fwd"], row["fwd_bwd"] = median_time(fwd, budget_s), median_time(fwd_bwd, budget_s)
                    row["torch_fwd"] = row["torch_fwd_bwd"] = None
                row.update(rates(flop, row))
                if name == "tutorial N1 I64":
                    tm = None
                    if torch is not None:
                        tm = torch.nn.LSTM(I, H, L)
                        tm.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
                    row["step_chars_s"], row["torch_step_chars_s"] = step_rate(model, budget_s, tm)
                rows.append(row)
                log(format_row(row))
                roof = max(roof, roof_gflops(budget_s))
            # One roof for the thread count: the best measured before and after every point.
            log(f"threads={n}: matmul roof {roof:.0f} GFLOP/s (best of the run)")
            for row in rows[first:]:
                row["roof"] = roof
                row.update(rates(forward_flop(row["L"], row["H"], row["T"], row["N"], row["I"]), row))
    return rows


def _ratio(a, b):
    return None if a is None or b is None else a / b


def rates(flop, row):
    """GFLOP/s of fastlstm and torch (forward, and forward+backward at 3x the
    forward FLOPs), and the lowest time ratio against torch that a run at
    exactly the matmul roof would give: torch's share of the roof. A target
    ratio below it asks for more than the roof."""
    out = {}
    for key, work in (("fwd", flop), ("fwd_bwd", 3 * flop)):
        out["gflops_" + key] = work / row[key] / 1e9
        theirs = row.get("torch_" + key)
        out["torch_gflops_" + key] = None if theirs is None else work / theirs / 1e9
        out["ratio_at_roof_" + key] = None if theirs is None else work / (row["roof"] * 1e9) / theirs
    return out


#: The CPU-speed issue's targets: fastlstm time / torch time at most this.
TARGETS = {"fwd": 1.0, "fwd_bwd": 0.75}


def target_summary(rows):
    """Per pass: how many points meet the target ratio, and at how many of the
    others the target lies beyond the roof (torch runs above target x roof)."""
    lines = []
    for key, label in (("fwd", "forward"), ("fwd_bwd", "forward+backward")):
        rr = [r for r in rows if r.get("torch_" + key) is not None]
        if not rr:
            continue
        target = TARGETS[key]
        met = sum(_ratio(r[key], r["torch_" + key]) <= target for r in rr)
        beyond = [r for r in rr if _ratio(r[key], r["torch_" + key]) > target and r["ratio_at_roof_" + key] > target]
        text = f"- {label} ratio <= {target:g}: {met} of {len(rr)} points"
        if beyond:
            text += (f"; at {len(beyond)} of the others torch already runs above {target:.0%} of the roof, "
                     f"so that the target asks for more than the roof: "
                     + ", ".join(f"{r['name']} at {r['threads']} thread{'s' if r['threads'] > 1 else ''} "
                                 f"(ratio at the roof {r['ratio_at_roof_' + key]:.2f})" for r in beyond))
        lines.append(text)
    return lines


#: The printed table: (heading, width) per column; format_row fills them in this order.
COLUMNS = (("case", 18), ("thr", 3), ("fwd ms", 8), ("fwd+bwd ms", 10), ("fwd GFLOP/s", 11),
           ("fwd+bwd GFLOP/s", 15), ("% roof", 6), ("torch fwd ms", 12), ("torch fwd+bwd ms", 16),
           ("ratio fwd", 9), ("ratio fwd+bwd", 13))


def header_line():
    """Column headings of format_row's lines (ratio = fastlstm time / torch time)."""
    return "  " + " ".join(f"{h:<{w}}" if k == 0 else f"{h:>{w}}" for k, (h, w) in enumerate(COLUMNS))


def format_row(r):
    rf = _ratio(r["fwd"], r["torch_fwd"])
    rb = _ratio(r["fwd_bwd"], r["torch_fwd_bwd"])

    def opt(value, spec):
        return "n/a" if value is None else format(value, spec)

    cells = [r["name"], r["threads"], f"{r['fwd'] * 1e3:.2f}", f"{r['fwd_bwd'] * 1e3:.2f}",
             f"{r['gflops_fwd']:.0f}", f"{r['gflops_fwd_bwd']:.0f}", f"{r['gflops_fwd_bwd'] / r['roof']:.0%}",
             opt(r["torch_fwd"] and r["torch_fwd"] * 1e3, ".2f"),
             opt(r["torch_fwd_bwd"] and r["torch_fwd_bwd"] * 1e3, ".2f"), opt(rf, ".2f"), opt(rb, ".2f")]
    text = "  " + " ".join(f"{c:<{w}}" if k == 0 else f"{c:>{w}}"
                           for k, (c, (_, w)) in enumerate(zip(cells, COLUMNS)))
    if "step_chars_s" in r:
        peer = r.get("torch_step_chars_s")
        text += f"\n  {'':<18}      step: {r['step_chars_s']:,.0f} chars/s" + (
            f" (torch carrying its state: {peer:,.0f})" if peer else "")
    return text


def machine_info():
    """The shared machine facts, flattened for this report's list."""
    info = _machine_info()
    flat = {"cpu": info["cpu"], "cores": info["cores"], "platform": info["platform"]}
    flat.update({k: v or "not installed" for k, v in info["versions"].items() if k != "pytest-benchmark"})
    flat["c_kernel"] = info["c_backend"].get("c_kernel")
    if "openblas" in info:
        flat["openblas"] = info["openblas"]
    flat["OPENBLAS_CORETYPE"] = info["env"]["OPENBLAS_CORETYPE"]
    return flat


def markdown(rows, info, command):
    out = ["# fastlstm vs PyTorch CPU LSTM", "",
           ("Medians, float32, all measured side by side in one run of the command below (fastlstm and torch "
            "timed in alternating rounds). Ratio = fastlstm time / torch time (below 1 means fastlstm is faster); "
            "roof = the fastest round of a NumPy float32 matmul 2048² at the same thread count, measured before "
            "and after every point (the best of them for all points); forward+backward GFLOP/s counts 3x the "
            "forward FLOPs; ratio at roof = the lowest ratio a run at exactly the roof would give, which is "
            "also torch's share of the roof (torch's GFLOP/s over the roof)."), "",
           "Command: `" + command + "`", ""]
    out += [f"- {k}: {v}" for k, v in info.items()]
    columns = ["case", "threads", "fastlstm fwd ms", "torch fwd ms", "ratio fwd", "fastlstm fwd+bwd ms",
               "torch fwd+bwd ms", "ratio fwd+bwd", "fwd+bwd GFLOP/s", "% of roof", "ratio at roof fwd / fwd+bwd"]
    out += ["", "| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]

    def fmt(value, spec, scale=1.0):
        return "n/a" if value is None else format(value * scale, spec)
    for r in rows:
        rf = _ratio(r["fwd"], r["torch_fwd"])
        rb = _ratio(r["fwd_bwd"], r["torch_fwd_bwd"])
        out.append(f"| {r['name']} | {r['threads']} | {r['fwd'] * 1e3:.2f} | "
                   f"{fmt(r['torch_fwd'], '.2f', 1e3)} | {fmt(rf, '.2f')} | "
                   f"{r['fwd_bwd'] * 1e3:.2f} | {fmt(r['torch_fwd_bwd'], '.2f', 1e3)} | "
                   f"{fmt(rb, '.2f')} | {r['gflops_fwd_bwd']:.0f} | {r['gflops_fwd_bwd'] / r['roof']:.0%} | "
                   f"{fmt(r['ratio_at_roof_fwd'], '.2f')} / "
                   f"{fmt(r['ratio_at_roof_fwd_bwd'], '.2f')} |")
    summary = target_summary(rows)
    if summary:
        out += ["", "Targets, over the points above:", ""] + summary
    out += ["", "| threads | matmul roof GFLOP/s | step chars/s (tutorial model, N=1) | torch step chars/s |",
            "| --- | --- | --- | --- |"]
    for n in sorted({r["threads"] for r in rows}):
        rr = [r for r in rows if r["threads"] == n]
        step = next((r for r in rr if "step_chars_s" in r), None)
        s1 = f"{step['step_chars_s']:,.0f}" if step else "n/a"
        s2 = f"{step['torch_step_chars_s']:,.0f}" if step and step.get("torch_step_chars_s") else "n/a"
        out.append(f"| {n} | {rr[0]['roof']:.0f} | {s1} | {s2} |")
    return "\n".join(out) + "\n"


def chart(rows, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = [r for r in rows if r["torch_fwd"] is not None]
    if not rows:
        return False
    threads = sorted({r["threads"] for r in rows})
    fig, axes = plt.subplots(1, len(threads), figsize=(7 * len(threads), 6), squeeze=False)
    for ax, n in zip(axes[0], threads):
        rr = [r for r in rows if r["threads"] == n]
        y = np.arange(len(rr))
        ax.barh(y - 0.2, [r["fwd"] / r["torch_fwd"] for r in rr], 0.4, label="forward")
        ax.barh(y + 0.2, [r["fwd_bwd"] / r["torch_fwd_bwd"] for r in rr], 0.4, label="forward+backward")
        ax.plot([r["ratio_at_roof_fwd_bwd"] for r in rr], y + 0.2, "k|", ms=12,
                label="forward+backward at the roof")
        ax.axvline(1.0, color="k", lw=1)
        ax.set_yticks(y, [r["name"] for r in rr])
        ax.invert_yaxis()
        ax.set_xlabel("fastlstm time / torch time (lower is better)")
        ax.set_title(f"{n} thread{'s' if n > 1 else ''}")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fastlstm.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=None,
                        help="thread counts to run (default: 1 2; with --options: 2)")
    parser.add_argument("--quick", action="store_true", help="only four cases, for a first look")
    parser.add_argument("--options", action="store_true",
                        help="only issue 14's cases (bidirectional, lengths, projection): OPTIONS.md, options.json")
    parser.add_argument("--ort", action="store_true",
                        help="only the small-batch forward against ONNX Runtime (issue 15, item 5; each in "
                             "its own process): ORT.md, ort.json")
    parser.add_argument("--rounds", type=int, default=9, help="--ort: alternating rounds per point")
    parser.add_argument("--budget", type=float, default=1.0, help="seconds of timed calls per measurement")
    parser.add_argument("--backend", default="c", choices=fastlstm._config.BACKENDS,
                        help="fastlstm backend to time (default: c)")
    parser.add_argument("--out", default="fastlstm-bench",
                        help="folder for RESULTS.md, results.json and ratios.png (--options: OPTIONS.md, options.json)")
    args = parser.parse_args(argv)
    if args.backend not in fastlstm.available_backends():
        parser.error(f"backend {args.backend!r} is not available here; available: {fastlstm.available_backends()}")
    if args.options and args.quick:
        parser.error("--quick shortens the grid; --options runs its own five cases")
    if args.ort and (args.options or args.quick):
        parser.error("--ort runs its own cases: not with --options or --quick")
    if _torch() is None:
        print("note: torch is not installed; only fastlstm is timed (pip install torch for the ratios)")
    command = "python -m fastlstm.bench " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.options:
        from . import options  # imports this module: loaded on demand
        options.main(args.threads or [2], args.budget, args.backend, args.out, command)
        return
    if args.ort:
        from . import ort
        ort.main(args.threads or [1, 2], args.rounds, 20, args.out, command)
        return
    os.makedirs(args.out, exist_ok=True)
    rows = run(QUICK if args.quick else GRID, args.threads or [1, 2], args.budget, args.backend)
    info = machine_info()
    with open(os.path.join(args.out, "RESULTS.md"), "w") as fh:
        fh.write(markdown(rows, info, command))
    with open(os.path.join(args.out, "results.json"), "w") as fh:
        json.dump({"machine": info, "rows": rows}, fh, indent=1)
    png = os.path.join(args.out, "ratios.png")
    print(f"wrote {os.path.join(args.out, 'RESULTS.md')}, results.json"
          + (f" and {png}" if chart(rows, png) else " (install matplotlib for the chart)"))


if __name__ == "__main__":
    main()
