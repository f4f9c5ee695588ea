"""Trainer benchmark (a script, not a pytest test): fastlstm's character-model trainer against
the same model in PyTorch, side by side, each in its own subprocess for a fixed time budget.

Peer setup (both): Macbeth with case kept, windows of 100 characters at random offsets of the
first 90%, batch 64, every position predicting the next character, Embedding(V, 64) ->
LSTM(300) x 2 (dropout 0.2 between) -> Dropout(0.2) -> Linear(V), Adam lr 2e-3, no clipping.
Reports steps/s, characters/s, held-out loss over time (and the time to reach 1.71), peak
memory (ru_maxrss of each subprocess) and generation characters/s at N=1 through
``fastlstm generate`` (start-up excluded; float32 and bf16 weights), then appends a section to
bench/TRAINER_RESULTS.md.

    python bench/bench_trainer.py                  # 120 s per trainer
    python bench/bench_trainer.py --budget 10 --no-write
"""

import argparse
import json
import os
import re
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "TRAINER_RESULTS.md"
sys.path.insert(0, str(ROOT))  # benchmark the checkout (the workers get it on PYTHONPATH too)

#: The peer setup, as fastlstm.charlm.options options.
PEER = dict(seq_len=100, batch_size=64, lr=2e-3, dropout=0.2, clip=0.0, hidden_size=300, num_layers=2,
            embed_dim=64, target="all", input_mode="embedding", lowercase=False)
TRAINERS = ("torch", "fastlstm", "fastlstm-defaults")


# ----------------------------------------------------------------------------- workers
def _trainer(options, seed, out):
    from fastlstm.charlm.options import resolve_options
    from fastlstm.charlm.run import prepare_text
    from fastlstm.charlm.trainer import Trainer
    opts = resolve_options(dict(options, seed=seed))
    text, source = prepare_text(opts)
    return Trainer(opts, text, out=out, source=source)


def _loop(step, evaluate, budget, eval_interval, target):
    """Train for ``budget`` seconds of training time (evaluations excluded from the clock)."""
    evals = []
    train_time = 0.0
    steps = 0
    next_eval = 0.0
    while True:
        if train_time >= next_eval:
            v = evaluate()
            evals.append([round(train_time, 3), steps, v])
            next_eval += eval_interval
        if train_time >= budget:
            break
        t = time.perf_counter()
        step()
        train_time += time.perf_counter() - t
        steps += 1
    reach = next((t for t, _, v in evals if v <= target), None)
    return dict(steps=steps, train_time=train_time, evals=evals, final_val=evals[-1][2], time_to_target=reach)


def worker_fastlstm(args, options):
    import fastlstm
    from fastlstm.charlm.threads import compute_threads
    out = Path(args.workdir)
    tr = _trainer(options, args.seed, out)
    with compute_threads():
        tr.train_step()  # warm-up (first-call allocations), not timed
        res = _loop(tr.train_step, tr.evaluate, args.budget, args.eval_interval, args.target)
    tr.save()  # for the generation measurement
    res.update(chars=res["steps"] * tr.opts["seq_len"] * tr.opts["batch_size"], checkpoint=str(out),
               version=fastlstm.__version__, backend=fastlstm.available_backends(),
               options={k: tr.opts[k] for k in sorted(PEER) + ["seed"]})
    return res


def worker_torch(args, options):
    import numpy as np
    import torch
    import torch.nn.functional as F
    from torch import nn
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    tr = _trainer(options, args.seed, None)  # fastlstm's data pipeline: the same batches
    V, E, H, L, p = len(tr.vocab), options["embed_dim"], options["hidden_size"], options["num_layers"], \
        options["dropout"]

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(V, E)
            self.lstm = nn.LSTM(E, H, L, dropout=p)
            self.drop = nn.Dropout(p)
            self.fc = nn.Linear(H, V)

        def forward(self, x, state=None):
            y, state = self.lstm(self.emb(x), state)
            return self.fc(self.drop(y)), state

    net = Net()
    opt = torch.optim.Adam(net.parameters(), lr=options["lr"])

    def step():
        x, y = tr.batch()
        net.train()
        logits, _ = net(torch.from_numpy(x.astype(np.int64)))
        loss = F.cross_entropy(logits.reshape(-1, V), torch.from_numpy(y.astype(np.int64)).reshape(-1))
        opt.zero_grad(set_to_none=False)
        loss.backward()
        opt.step()
        tr.steps_done += 1

    def evaluate():
        net.eval()
        total, count = 0.0, 0
        with torch.no_grad():
            for ids, tg in tr.val_batches:
                logits, _ = net(torch.from_numpy(ids.astype(np.int64)))
                total += F.cross_entropy(logits.reshape(-1, V), torch.from_numpy(tg.astype(np.int64)).reshape(-1),
                                         reduction="sum").item()
                count += tg.size
        return total / count

    step()  # warm-up, not timed
    res = _loop(step, evaluate, args.budget, args.eval_interval, args.target)
    # generation at N=1 with a carried state, in-process (for reference; fastlstm's goes through its CLI)
    net.eval()
    n = 3000
    with torch.inference_mode():
        x = torch.zeros((1, 1), dtype=torch.int64)
        state = None
        gen = torch.Generator().manual_seed(0)
        t = time.perf_counter()
        for _ in range(n):
            logits, state = net(x, state)
            probs = torch.softmax(logits[0, 0] / 0.8, 0)
            x = torch.multinomial(probs, 1, generator=gen).view(1, 1)
        res["gen_chars_per_s"] = n / (time.perf_counter() - t)
    res.update(chars=res["steps"] * options["seq_len"] * options["batch_size"], version=torch.__version__,
               threads=torch.get_num_threads())
    return res


def run_worker(args):
    from fastlstm.charlm.options import DEFAULTS
    if args.worker == "fastlstm-defaults":
        options = {k: DEFAULTS[k] for k in PEER}
    else:
        options = dict(PEER)
    res = (worker_torch if args.worker == "torch" else worker_fastlstm)(args, options)
    res["name"] = args.worker
    res["options"] = dict(res.get("options", options))
    res["maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    res["steps_per_s"] = res["steps"] / res["train_time"]
    res["chars_per_s"] = res["chars"] / res["train_time"]
    Path(args.json).write_text(json.dumps(res))


# ----------------------------------------------------------------------------- the driver
def bench_env():
    """The environment of the measured subprocesses: OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE unset
    (they slow current OpenBLAS on these machines; see DESIGN.md section 7)."""
    env = dict(os.environ)
    for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        env.pop(k, None)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def generation_rate(checkpoint, length, env, weights="float32"):
    """chars/s of ``fastlstm generate --weights WEIGHTS`` at N=1, start-up excluded: its --timing
    report, and the wall-clock difference between a long and a short run (which also counts the
    stdout writes)."""
    def once(n):
        cmd = [sys.executable, "-m", "fastlstm", "generate", "--checkpoint", checkpoint, "--length", str(n),
               "--seed", "0", "--timing", "--prime", "\n", "--weights", weights]
        t = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
        wall = time.perf_counter() - t
        if r.returncode != 0:
            raise RuntimeError(f"fastlstm generate failed: {r.stderr.strip()}")
        m = re.search(r"([\d,]+) chars/s", r.stderr)
        return wall, float(m.group(1).replace(",", "")), len(r.stdout)
    short = once(1000)
    long_ = once(length)
    return dict(reported=long_[1], wall_diff=(length - 1000) / max(long_[0] - short[0], 1e-9), length=length,
                sample_len=long_[2])


def machine_info():
    """The shared machine facts (fastlstm.bench.machine), flattened for this report,
    plus the load average at the start of this run."""
    import numpy

    import fastlstm
    from fastlstm.bench import machine

    fastlstm.LSTM(1, 1)(numpy.zeros((1, 1, 1), numpy.float32))  # load the kernels' BLAS first
    shared = machine.machine_info()
    info = {"cpu": shared["cpu"], "cpus": shared["cores"], "platform": shared["platform"],
            "python": shared["versions"]["python"], "numpy": shared["versions"]["numpy"],
            "scipy": shared["versions"]["scipy"], "load": os.getloadavg()}
    info["blas"] = [f"{b['internal_api']} {b.get('version')} {b.get('architecture')} ({b['num_threads']} threads)"
                    for b in shared.get("blas", [])]
    return info


def _defaults_diff():
    from fastlstm.charlm.options import DEFAULTS
    diff = [f"{k.replace('_', ' ')} {DEFAULTS[k]:g}" for k in sorted(PEER) if DEFAULTS[k] != PEER[k]]
    return "the peer setup but " + ", ".join(diff) if diff else "the peer setup"


def fmt_time(t):
    return "not reached" if t is None else f"{t:.1f} s"


def step_flops(V=67):
    """Floating-point operations of the products of one peer step (2 per multiply-add): per
    row (a position of a window), each LSTM layer's forward products (x . W_ih^T, h . W_hh^T)
    and backward ones (dh, dx, dW_ih, dW_hh), with layer 0's input folded (its x . W_ih^T is a
    table lookup, its dx not needed, its dW_ih a scatter: none counted), and the dense
    layer's three."""
    H, L, E = PEER["hidden_size"], PEER["num_layers"], PEER["embed_dim"]
    del E  # folded
    G, per_row = 4 * H, 0
    for layer in range(L):
        inputs = 0 if layer == 0 else H
        per_row += 2 * G * (inputs + H)  # forward
        per_row += 2 * G * (H + H) + (2 * G * 2 * inputs if inputs else 0)  # dh, dW_hh; dx, dW_ih
    per_row += 3 * 2 * H * V
    return per_row * PEER["batch_size"] * PEER["seq_len"]


def report(results, gen, info, args, command):
    when = time.strftime("%Y-%m-%d %H:%M")
    lines = [f"## Trainer benchmark, {when}" + (" (provisional)" if args.note else ""), ""]
    if args.note:
        lines += [f"> {args.note}", ""]
    lines += [f"- Command: `{command}` (each trainer in its own subprocess, {args.budget:g} s of training "
              f"time each, evaluations every {args.eval_interval:g} s excluded from the clock)",
              f"- Machine: {info.get('cpu', '?')}, {info['cpus']} CPUs, {info['platform']}; load average at "
              f"start {', '.join(f'{x:.2f}' for x in info['load'])}",
              f"- Versions: Python {info['python']}, NumPy {info['numpy']}, SciPy {info['scipy']}"
              + "".join(f", {r['name']} {r['version']}" for r in results if r["name"] != "fastlstm-defaults"),
              f"- BLAS: {'; '.join(info.get('blas', ['?']))}",
              "- Setup: Macbeth, case kept, windows of 100 characters at random offsets of the first 90%, "
              "batch 64, every position predicts the next character, Embedding(V, 64) -> LSTM(300) x 2 "
              "(dropout 0.2) -> Dropout(0.2) -> Linear(V), Adam lr 2e-3, no clipping; PyTorch on "
              f"{args.threads} threads; held-out loss: mean cross-entropy (nats) over the last 10% in "
              "100-character windows"
              + (f"; `fastlstm-defaults` is `fastlstm train`'s own defaults ({_defaults_diff()})"
                 if any(r["name"] == "fastlstm-defaults" for r in results) else ""),
              "",
              f"| trainer | steps | steps/s | chars/s | held-out loss at {args.budget:g} s | time to {args.target} "
              f"| peak RSS |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        lines.append(f"| {r['name']} | {r['steps']} | {r['steps_per_s']:.2f} | {r['chars_per_s']:,.0f} | "
                     f"{r['final_val']:.3f} | {fmt_time(r['time_to_target'])} | {r['maxrss_mb']:,.0f} MB |")
    by = {r["name"]: r for r in results}
    lines.append("")
    if "torch" in by and "fastlstm" in by:
        ratio = by["fastlstm"]["chars_per_s"] / by["torch"]["chars_per_s"]
        lines.append(f"- Training throughput, fastlstm / PyTorch: **{ratio:.2f}x** (target >= 1.6x, issue 15)")
        if info.get("roof"):
            flops = step_flops()
            floor = flops / (info["roof"] * 1e9)
            best = PEER["batch_size"] * PEER["seq_len"] / floor
            lines.append(f"- Roof: NumPy's float32 matmul 2048² at {args.threads} threads, {info['roof']:.0f} GFLOP/s "
                         f"(the best of before and after the trainers). A step's products (LSTM and dense, "
                         f"forward and backward, the embedding folded) are {flops / 1e9:.1f} GFLOP: at the roof "
                         f"a step would take {floor * 1e3:.0f} ms and nothing else, {best:,.0f} chars/s, "
                         f"{best / by['torch']['chars_per_s']:.2f}x PyTorch's rate here")
        tt = by["torch"]["final_val"]
        for name in ("fastlstm", "fastlstm-defaults"):
            if name in by:
                reach = next((t for t, _, v in by[name]["evals"] if v <= tt), None)
                lines.append(f"- {name} reaches PyTorch's {args.budget:g}-s held-out loss ({tt:.3f}) after "
                             f"{fmt_time(reach)} (target <= half the budget)")
    for weights, g in (gen or {}).items():
        lines.append(f"- Generation at N=1 through `fastlstm generate --weights {weights}` (start-up excluded): "
                     f"**{g['reported']:,.0f} chars/s** as it reports (`--timing`), {g['wall_diff']:,.0f} "
                     f"chars/s by wall-clock difference of {g['length']:,} and 1,000 characters"
                     + ("" if weights == "float32" else
                        f" ({g['reported'] / gen['float32']['reported']:.2f}x float32, measured after it)"
                        if "float32" in gen else ""))
    if "torch" in by and "gen_chars_per_s" in by["torch"]:
        lines.append(f"- PyTorch, the same generation loop in-process (N=1, carried state): "
                     f"{by['torch']['gen_chars_per_s']:,.0f} chars/s")
    lines += ["", "Held-out loss over training time (the last evaluation at or before each mark):", ""]
    marks = [args.budget * k / 8 for k in range(1, 9)]
    lines.append("| trainer | " + " | ".join(f"{m:g} s" for m in marks) + " |")
    lines.append("| --- |" + " ---: |" * len(marks))
    for r in results:
        row = []
        for m in marks:
            prior = [v for t, _, v in r["evals"] if t <= m + 1e-9]
            row.append(f"{prior[-1]:.3f}" if prior else "-")
        lines.append(f"| {r['name']} | " + " | ".join(row) + " |")
    lines.append("")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=float, default=120.0, help="seconds of training per trainer (default 120)")
    ap.add_argument("--eval-interval", type=float, default=3.0,
                    help="seconds of training between held-out evaluations (default 3)")
    ap.add_argument("--target", type=float, default=1.71, help="held-out loss to time (default 1.71)")
    ap.add_argument("--trainers", default=",".join(TRAINERS),
                    help=f"comma-separated, from {', '.join(TRAINERS)} (default all three)")
    ap.add_argument("--threads", type=int, default=2, help="PyTorch threads (default 2)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gen-length", type=int, default=100_000,
                    help="characters for the generation measurement (default 100000)")
    ap.add_argument("--results", default=str(RESULTS), help="markdown file to append to")
    ap.add_argument("--no-write", action="store_true", help="print the section, do not append it")
    ap.add_argument("--note", default="", help="a line to put under the heading (e.g. a caveat)")
    ap.add_argument("--worker", choices=TRAINERS, help=argparse.SUPPRESS)
    ap.add_argument("--json", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return run_worker(args)

    command = "python bench/bench_trainer.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    names = [n.strip() for n in args.trainers.split(",") if n.strip()]
    bad = [n for n in names if n not in TRAINERS]
    if bad:
        ap.error(f"unknown trainers {bad}; choose from {', '.join(TRAINERS)}")
    env = bench_env()
    info = machine_info()
    from fastlstm.bench.grid import roof_gflops
    roofs = [roof_gflops(3.0)]
    results, gen = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            if name == "torch":
                try:
                    import torch  # noqa: F401
                except ImportError:
                    print("PyTorch is not installed: skipping the torch trainer (pip install torch)")
                    continue
            js = Path(tmp) / f"{name}.json"
            work = Path(tmp) / name
            print(f"== {name}: {args.budget:g} s ...", flush=True)
            cmd = [sys.executable, __file__, "--worker", name, "--json", str(js), "--workdir", str(work),
                   "--budget", str(args.budget), "--eval-interval", str(args.eval_interval),
                   "--target", str(args.target), "--threads", str(args.threads), "--seed", str(args.seed)]
            subprocess.run(cmd, check=True, env=env, cwd=ROOT)
            r = json.loads(js.read_text())
            results.append(r)
            print(f"   {r['steps']} steps, {r['chars_per_s']:,.0f} chars/s, held-out loss {r['final_val']:.3f}, "
                  f"time to {args.target}: {fmt_time(r['time_to_target'])}, peak RSS {r['maxrss_mb']:,.0f} MB",
                  flush=True)
            if name == "fastlstm" and args.gen_length > 0:
                gen = {w: generation_rate(r["checkpoint"], args.gen_length, env, w) for w in ("float32", "bf16")}
                for w, g in gen.items():
                    print(f"   generation ({w} weights): {g['reported']:,.0f} chars/s (reported), "
                          f"{g['wall_diff']:,.0f} chars/s (wall-clock difference)", flush=True)
    roofs.append(roof_gflops(3.0))
    info["roof"] = max(roofs)
    section = report(results, gen, info, args, command)
    print()
    print(section)
    if not args.no_write:
        path = Path(args.results)
        head = "" if path.exists() else ("# fastlstm trainer vs PyTorch\n\nWritten by `bench/bench_trainer.py`; "
                                          "the newest section is last.\n\n")
        with open(path, "a", encoding="utf-8") as f:
            f.write(head + section)
        print(f"appended to {path}")


if __name__ == "__main__":
    sys.exit(main())
