"""`python -m fastlstm.bench --options`: issue 14's targets, fastlstm against PyTorch's CPU
LSTM on the rest of torch.nn.LSTM's options, measured side by side in one run.

Cases (CASES): the bidirectional tutorial model (N 1/30/128), variable lengths (against
fastlstm on the same batch padded and against torch's packed path) and a projection.
Each case copies torch's weights into fastlstm, checks once that both compute the same
outputs (and input gradients), then times them in alternating rounds (paired_medians)
at the same thread count (grid.Threads), with the matmul roof (grid.roof_gflops)
measured before and after every case. run() returns one dict per case and thread
count; markdown() renders OPTIONS.md; main() runs them and writes it and options.json,
with how busy other processes kept the machine meanwhile (machine.MachineLoad).
PyTorch is optional: without it only the fastlstm-only ratio is computed.
"""

from __future__ import annotations

import datetime
import json
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

import fastlstm

from .grid import Threads, _torch, machine_info, roof_gflops
from .machine import MachineLoad, median_time, paired_medians


@dataclass(frozen=True)
class Case:
    """One shape: L layers of H cells, T steps, batch N, I inputs, torch.nn.LSTM options."""

    name: str
    L: int
    H: int
    T: int
    N: int
    I: int
    options: dict[str, Any] = field(default_factory=dict)
    lengths: bool = False  # lengths drawn uniform in [1, T] (default_rng(0))


#: The issue's cases (tests swap in tiny ones).
CASES = [Case(f"bidirectional tutorial N{n}", 2, 300, 50, n, 64, {"bidirectional": True}) for n in (1, 30, 128)] + [
    Case("lengths U[1,100] T100 N64 I128 H256", 1, 256, 100, 64, 128, lengths=True),
    Case("proj P256 H1024 I256 T100 N32", 1, 1024, 100, 32, 256, {"proj_size": 256}),
]

#: Issue 14's targets, fastlstm time / reference time at most this (None: reported for context).
TARGETS: dict[str, dict[str, float | None]] = {"bidirectional": {"fwd": 0.8, "fwd_bwd": 0.8},
           "lengths": {"fwd_vs_padded": 0.6, "fwd_vs_torch_packed": 0.4, "fwd_bwd_vs_torch_packed": 0.4},
           "proj": {"fwd": None, "fwd_bwd": 0.6}}

#: Largest |fastlstm - torch| allowed in the check before timing (outputs; input gradients
#: relative to their largest magnitude).
TOLERANCE = 1e-3

#: The fallback warning of fastlstm.functional while a backend lacks an option.
FALLBACK_WARNING = r"fastlstm: the .* backend does not run .* yet"


class Mismatch(AssertionError):
    """fastlstm and torch disagree: timing them would compare different functions."""


def kind(case: Case) -> str:
    return "lengths" if case.lengths else "proj" if case.options.get("proj_size") else "bidirectional"


def forward_flop(case: Case, lengths: np.ndarray | None) -> int:
    """Forward FLOPs: per layer and direction 2*steps*4H*(I_k + K), plus 2*steps*P*H projected."""
    D = 2 if case.options.get("bidirectional") else 1
    P = case.options.get("proj_size", 0)
    K = P or case.H
    steps = int(lengths.sum()) if lengths is not None else case.T * case.N
    return sum(D * 2 * steps * (4 * case.H * ((case.I if k == 0 else D * K) + K) + P * case.H)
               for k in range(case.L))


def runs_on(case: Case, backend: str) -> str:
    """The backend that runs the case's fastlstm calls: `backend`, or the NumPy fallback."""
    needed = ["reverse"] * bool(case.options.get("bidirectional")) + ["lengths"] * case.lengths + [
        "projection"] * bool(case.options.get("proj_size"))
    try:
        from fastlstm.backends import get_backend
        have = getattr(get_backend(backend), "OPTIONS", ())
    except Exception:  # the note is informational; never stop the benchmark for it
        return backend
    missing = [o for o in needed if o not in have]
    return f"numpy (fallback: {backend} lacks {', '.join(missing)})" if missing else backend


# -- the timed functions ------------------------------------------------------------------
def inputs(case: Case) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """x (T, N, I), dy (T, N, D*K) and the lengths (or None), the same for every run."""
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, case.T + 1, case.N) if case.lengths else None
    D = 2 if case.options.get("bidirectional") else 1
    K = case.options.get("proj_size", 0) or case.H
    x = rng.standard_normal((case.T, case.N, case.I)).astype(np.float32)
    dy = rng.standard_normal((case.T, case.N, D * K)).astype(np.float32)
    return x, dy, lengths


def fastlstm_fns(model, x, dy, lengths) -> tuple[Callable[[], Any], Callable[[], Any]]:
    def fwd():
        return model.forward(x, lengths=lengths)

    def fwd_bwd():
        y, _ = model.forward(x, lengths=lengths, training=True)
        dx, _ = model.backward(dy)
        return y, dx
    return fwd, fwd_bwd


def torch_fns(lstm, x, dy, lengths) -> tuple[Callable[[], Any], Callable[[], Any]]:
    """torch's forward (no_grad) and forward+backward; with lengths through its packed path
    (pack_padded_sequence -> LSTM -> pad_packed_sequence), backward through the whole chain."""
    torch = _torch()
    assert torch is not None
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
    T = x.shape[0]
    xt, dyt = torch.from_numpy(x), torch.from_numpy(dy)
    lens = None if lengths is None else torch.from_numpy(np.asarray(lengths, np.int64))

    def run(inp):
        if lens is None:
            return lstm(inp)[0]
        out, _ = lstm(pack_padded_sequence(inp, lens, enforce_sorted=False))
        return pad_packed_sequence(out, total_length=T)[0]

    def fwd():
        with torch.no_grad():
            return run(xt)

    def fwd_bwd():
        lstm.zero_grad(set_to_none=True)
        inp = xt.detach().requires_grad_(True)
        y = run(inp)
        y.backward(dyt)
        return y, inp.grad
    return fwd, fwd_bwd


def models(case: Case, backend: str):
    """fastlstm's model and torch's (None without torch), with torch's weights copied into fastlstm."""
    model = fastlstm.LSTM(case.I, case.H, case.L, dtype=np.float32, backend=backend, seed=0, **case.options)
    torch = _torch()
    if torch is None:
        return model, None
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(case.I, case.H, case.L, **case.options)
    model.load_state_dict({k: v.detach().numpy() for k, v in lstm.state_dict().items()})
    return model, lstm


def check(label: str, ours, theirs) -> float:
    """Max |fastlstm - torch| of the outputs (y) and the input gradients (dx); raise Mismatch beyond TOLERANCE."""
    ours = ours if isinstance(ours, tuple) else (ours,)
    theirs = theirs if isinstance(theirs, tuple) else (theirs,)
    y, ty = np.asarray(ours[0]), theirs[0].detach().numpy()
    diff = float(np.abs(y - ty).max())
    if not diff < TOLERANCE:
        raise Mismatch(f"{label}: fastlstm and torch outputs differ by {diff:.3g} (> {TOLERANCE:g})")
    if len(ours) > 1:
        dx, tdx = np.asarray(ours[1]), theirs[1].detach().numpy()
        dx_diff = float(np.abs(dx - tdx).max())
        if not dx_diff < TOLERANCE * max(1.0, float(np.abs(tdx).max())):
            raise Mismatch(f"{label}: fastlstm and torch input gradients differ by {dx_diff:.3g}")
        diff = max(diff, dx_diff)
    return diff


def ratio(label: str, ours: float | None, theirs: float | None, target: float | None,
          flop: int | None = None) -> dict[str, Any]:
    """One comparison; ``flop``: what fastlstm computes in it, for the roof bound (at_roof)."""
    r = None if ours is None or theirs is None else ours / theirs
    status = "n/a" if r is None else "context" if target is None else "PASS" if r <= target else "miss"
    return {"label": label, "ours_ms": None if ours is None else ours * 1e3,
            "theirs_ms": None if theirs is None else theirs * 1e3, "ratio": r, "target": target, "status": status,
            "flop": flop, "at_roof": None}


def set_roof(r: dict[str, Any], roof: float) -> None:
    """r["roof"] = roof, and each comparison's at_roof: the ratio a run at exactly the roof
    would give (its FLOPs at roof GFLOP/s over the reference time). A target below it asks
    for more than the machine's matmul does."""
    r["roof"] = roof
    for q in r["ratios"]:
        if q["flop"] is not None and q["theirs_ms"]:
            q["at_roof"] = q["flop"] / (roof * 1e9) / (q["theirs_ms"] / 1e3)


def measure(case: Case, backend: str, budget_s: float) -> dict[str, Any]:
    """Medians (ms), ratios against the targets and the output check of one case."""
    x, dy, lengths = inputs(case)
    model, lstm = models(case, backend)
    fwd, fwd_bwd = fastlstm_fns(model, x, dy, lengths)
    k = kind(case)
    targets = TARGETS[k]
    out: dict[str, Any] = {"name": case.name, "kind": k, "L": case.L, "H": case.H, "T": case.T, "N": case.N,
                           "I": case.I, "options": dict(case.options), "runs_on": runs_on(case, backend),
                           "max_abs_diff": None}
    flop = forward_flop(case, lengths)
    t: dict[str, Any] = {}  # medians in seconds, None for torch's without torch
    if lengths is not None:
        out["lengths_sum"] = int(lengths.sum())
        pad_fwd, pad_fwd_bwd = fastlstm_fns(model, x, dy, None)
        if lstm is None:
            t.update(zip(("fwd", "fwd_padded"), paired_medians([fwd, pad_fwd], budget_s)))
            t["fwd_bwd"] = median_time(fwd_bwd, budget_s)
            t.update(torch_packed_fwd=None, torch_padded_fwd=None, torch_packed_fwd_bwd=None,
                     torch_padded_fwd_bwd=None)
        else:
            tp_fwd, tp_fwd_bwd = torch_fns(lstm, x, dy, lengths)
            tq_fwd, tq_fwd_bwd = torch_fns(lstm, x, dy, None)
            out["max_abs_diff"] = max(check(case.name + " (lengths, packed)", fwd_bwd(), tp_fwd_bwd()),
                                      check(case.name + " (padded)", pad_fwd_bwd(), tq_fwd_bwd()))
            t.update(zip(("fwd", "fwd_padded", "torch_packed_fwd", "torch_padded_fwd"),
                         paired_medians([fwd, pad_fwd, tp_fwd, tq_fwd], budget_s)))
            t.update(zip(("fwd_bwd", "torch_packed_fwd_bwd", "torch_padded_fwd_bwd"),
                         paired_medians([fwd_bwd, tp_fwd_bwd, tq_fwd_bwd], budget_s)))
        out["ratios"] = [
            ratio("fwd, lengths / fastlstm padded", t["fwd"], t["fwd_padded"], targets["fwd_vs_padded"], flop),
            ratio("fwd, lengths / torch packed", t["fwd"], t["torch_packed_fwd"], targets["fwd_vs_torch_packed"],
                  flop),
            ratio("fwd+bwd, lengths / torch packed", t["fwd_bwd"], t["torch_packed_fwd_bwd"],
                  targets["fwd_bwd_vs_torch_packed"], 3 * flop),
            ratio("torch fwd, packed / padded", t["torch_packed_fwd"], t["torch_padded_fwd"], None),
            ratio("torch fwd+bwd, packed / padded", t["torch_packed_fwd_bwd"], t["torch_padded_fwd_bwd"], None),
        ]
    else:
        if lstm is None:
            t.update(fwd=median_time(fwd, budget_s), fwd_bwd=median_time(fwd_bwd, budget_s),
                     torch_fwd=None, torch_fwd_bwd=None)
        else:
            t_fwd, t_fwd_bwd = torch_fns(lstm, x, dy, None)
            out["max_abs_diff"] = check(case.name, fwd_bwd(), t_fwd_bwd())
            t.update(zip(("fwd", "torch_fwd"), paired_medians([fwd, t_fwd], budget_s)))
            t.update(zip(("fwd_bwd", "torch_fwd_bwd"), paired_medians([fwd_bwd, t_fwd_bwd], budget_s)))
        out["ratios"] = [ratio("fwd / torch", t["fwd"], t["torch_fwd"], targets["fwd"], flop),
                         ratio("fwd+bwd / torch", t["fwd_bwd"], t["torch_fwd_bwd"], targets["fwd_bwd"], 3 * flop)]
    out["medians_ms"] = {key: None if v is None else v * 1e3 for key, v in t.items()}
    out["gflops_fwd"] = flop / t["fwd"] / 1e9
    out["gflops_fwd_bwd"] = 3 * flop / t["fwd_bwd"] / 1e9
    return out


def format_case(r: dict[str, Any]) -> str:
    """Progress lines of one finished case."""
    lines = [f"  {r['name']} (threads={r['threads']}, runs on {r['runs_on']}, roof {r['roof']:.0f} GFLOP/s)"]
    for q in r["ratios"]:
        lines.append(f"    {q['label']:<34} {_fmt(q['ours_ms'], '.2f'):>9} ms vs {_fmt(q['theirs_ms'], '.2f'):>9} ms"
                     f"  ratio {_fmt(q['ratio'], '.2f'):>5}  at roof {_fmt(q['at_roof'], '.2f', '-'):>4}"
                     f"  target {_fmt(q['target'], 'g', '-'):>4}  {q['status']}")
    return "\n".join(lines)


def _fmt(value, spec, none="n/a"):
    return none if value is None else format(value, spec)


def run(cases: list[Case] | None, threads: list[int], budget_s: float, backend: str,
        log: Callable[[str], Any] = print) -> list[dict[str, Any]]:
    """Every case at every thread count; the roof is the best of the runs before and after each case."""
    cases = CASES if cases is None else cases
    torch = _torch()
    results: list[dict[str, Any]] = []
    with warnings.catch_warnings():
        # The NumPy fallback's warning, once per option set, is in the report as "runs on".
        warnings.filterwarnings("ignore", message=FALLBACK_WARNING, category=RuntimeWarning)
        for n in threads:
            with Threads(n):
                roof = roof_gflops(budget_s)
                log(f"threads={n}: matmul roof {roof:.0f} GFLOP/s")
                first = len(results)
                for case in cases:
                    r = measure(case, backend, budget_s)
                    r["threads"] = n
                    r["torch_threads"] = None if torch is None else torch.get_num_threads()
                    roof = max(roof, roof_gflops(budget_s))
                    set_roof(r, roof)
                    results.append(r)
                    log(format_case(r))
                log(f"threads={n}: matmul roof {roof:.0f} GFLOP/s (best of the run)")
                for r in results[first:]:
                    set_roof(r, roof)
    return results


def markdown(results: list[dict[str, Any]], info: dict[str, Any], command: str, date: str,
             load: dict[str, Any] | None = None) -> str:
    threads = sorted({r["threads"] for r in results})
    out = ["# fastlstm vs PyTorch CPU LSTM: bidirectional, lengths, projection (issue 14)", "",
           ("Medians, float32, fastlstm and torch timed side by side in alternating rounds in one run of the "
            "command below, torch at fastlstm's thread count. Ratio = fastlstm time / reference time (below 1: "
            "fastlstm is faster); PASS when at most the target. Before timing, each case copies torch's weights "
            f"into fastlstm and checks that outputs and input gradients agree (max abs diff < {TOLERANCE:g}). "
            "Roof = the fastest round of a NumPy float32 matmul 2048² at the same thread count, the best "
            "measured before and after every case; fwd+bwd GFLOP/s counts 3x the forward FLOPs (with lengths, "
            "only the steps inside them)."), "",
           f"- command: `{command}`", f"- date: {date}", f"- cpu: {info.get('cpu')}",
           f"- threads: {', '.join(map(str, threads))}",
           f"- torch: {info.get('torch', 'not installed')}", f"- numpy: {info.get('numpy')}"]
    out += [f"- {k}: {v}" for k, v in info.items() if k not in ("cpu", "torch", "numpy")]
    if load:
        out.append(f"- other processes during the run: {load['foreign_cpu_s']} CPU s in {load['wall_s']} s "
                   f"({load['foreign_share']} of the machine; load average {load['loadavg_start'][0]:.2f} at the "
                   f"start, {load['loadavg_end'][0]:.2f} at the end)")
    columns = ["case", "threads", "runs on", "ratio", "fastlstm ms", "reference ms", "ratio", "at roof", "target",
               "result",
               "fastlstm fwd / fwd+bwd GFLOP/s", "roof GFLOP/s"]
    out += ["", "| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    for r in results:
        for q in r["ratios"]:
            out.append(f"| {r['name']} | {r['threads']} | {r['runs_on']} | {q['label']} | "
                       f"{_fmt(q['ours_ms'], '.2f')} | {_fmt(q['theirs_ms'], '.2f')} | {_fmt(q['ratio'], '.2f')} | "
                       f"{_fmt(q['at_roof'], '.2f', '-')} | "
                       f"{_fmt(q['target'], 'g', '-')} | {q['status']} | "
                       f"{r['gflops_fwd']:.1f} / {r['gflops_fwd_bwd']:.1f} | {r['roof']:.0f} |")
    graded = [q for r in results for q in r["ratios"] if q["target"] is not None and q["ratio"] is not None]
    if graded:
        out += ["", f"Targets met: {sum(q['status'] == 'PASS' for q in graded)} of {len(graded)}."]
        bound = [f"{r['name']}: {q['label']} ({q['at_roof']:.2f} > {q['target']:g})" for r in results
                 for q in r["ratios"] if q["target"] is not None and q["at_roof"] is not None
                 and q["at_roof"] > q["target"]]
        out += ["", "At roof: the ratio a run at exactly the matmul roof would give. Targets below it ask for "
                "more than the machine's own matmul: " + ("; ".join(bound) if bound else "none here") + "."]
    return "\n".join(out) + "\n"


def write(results: list[dict[str, Any]], out_dir: str, command: str, load: dict[str, Any] | None = None) -> str:
    """OPTIONS.md and options.json in out_dir; returns the markdown's path."""
    info = machine_info()
    date = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    os.makedirs(out_dir, exist_ok=True)
    md = os.path.join(out_dir, "OPTIONS.md")
    with open(md, "w") as fh:
        fh.write(markdown(results, info, command, date, load))
    with open(os.path.join(out_dir, "options.json"), "w") as fh:
        json.dump({"machine": info, "command": command, "date": date, "machine_load": load, "targets": TARGETS,
                   "cases": results}, fh, indent=1)
    return md


def main(threads: list[int], budget_s: float, backend: str, out_dir: str, command: str) -> None:
    """`python -m fastlstm.bench --options` after grid.main has parsed its arguments."""
    load = MachineLoad()
    load.start()
    results = run(None, threads, budget_s, backend)
    print(f"wrote {write(results, out_dir, command, load.report())} and options.json")
