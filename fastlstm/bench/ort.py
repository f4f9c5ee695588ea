"""Forward at small batch against ONNX Runtime's CPU LSTM (issue 15, item 5):
`python -m fastlstm.bench --ort`.

One layer, T=100, float32, the same weights in both (torch's gate order i, f,
g, o reordered to ONNX's i, o, f, c; the two biases side by side in B). Each
library runs in its own worker process, fed by this one: onnxruntime's
intra-op threads spin after a call and would slow whatever ran next in the
same process. The two workers are timed in alternating rounds with a pause
between rounds (so that a spinning pool has gone quiet), and each point is the
median over rounds of each round's median call. Before timing, both workers
compute the output of the same input and the driver checks they agree.
Reported besides the times: the rate at which each streams W_hh (4H·H·4 bytes
per step), the bandwidth-bound part of a small-batch step.

Both pack their weights once, before timing: ONNX Runtime when its session is
created (its CPU LSTM prepacks W and R), fastlstm through
``LSTM.inference_weights("float32", packed=True)`` (the fused kernels' panels of
W_hh and W_ih, kept; exact, bit for bit the per-call-packing results). So the
times compare the steps, not a repeated pack.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

T = 100
#: (H, I) points: I = H, and the tutorial's 300 units on its 64 inputs.
POINTS = ((128, 128), (300, 64), (300, 300), (512, 512), (1024, 1024))
BATCHES = (1, 30)
ROUND_PAUSE_S = 0.05
AGREE = 1e-4


def onnx_model(W_ih, W_hh, b_ih, b_hh):
    """A one-node ONNX LSTM graph (bytes) with these torch-ordered weights as initialisers."""
    from onnx import TensorProto, helper, numpy_helper

    H = W_hh.shape[1]

    def reorder(a):  # torch i, f, g, o -> ONNX i, o, f, c
        i, f, g, o = np.split(a, 4, axis=0)
        return np.concatenate([i, o, f, g], axis=0)

    W = reorder(W_ih)[None]
    R = reorder(W_hh)[None]
    B = np.concatenate([reorder(b_ih), reorder(b_hh)])[None]
    inits = [numpy_helper.from_array(np.ascontiguousarray(a, np.float32), name)
             for a, name in ((W, "W"), (R, "R"), (B, "B"))]
    node = helper.make_node("LSTM", ["X", "W", "R", "B"], ["Y"], hidden_size=H)
    graph = helper.make_graph(
        [node], "lstm", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", "N", W_ih.shape[1]])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["T", 1, "N", H])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    return model.SerializeToString()


# -- the worker processes ------------------------------------------------------------
def _worker(kind, case_file, threads, reps):
    """Load the case, answer the driver: 'check' writes the output, 'go' times ``reps`` calls."""
    case = np.load(case_file)
    x = case["x"]
    if kind == "ort":
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        sess = ort.InferenceSession(bytes(case["model"]), so, providers=["CPUExecutionProvider"])

        def call():
            return sess.run(None, {"X": x})[0][:, 0]
    else:
        import fastlstm
        W_ih = case["W_ih"]
        layer = fastlstm.LSTM(W_ih.shape[1], W_ih.shape[0] // 4)
        layer.load_state_dict({f"{name}_l0": case[k] for name, k in (
            ("weight_ih", "W_ih"), ("weight_hh", "W_hh"), ("bias_ih", "b_ih"), ("bias_hh", "b_hh"))})
        layer.inference_weights("float32", packed=True)  # packed once, as ORT's session does

        def call():
            return layer.forward(x)[0]
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "check":
            np.save(case_file + f".{kind}.npy", call())
            print("ok", flush=True)
        elif cmd == "go":
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                call()
                times.append(time.perf_counter() - t0)
            print(statistics.median(times), flush=True)
        else:
            return


class Worker:
    def __init__(self, kind, case_file, threads, reps):
        env = dict(os.environ, FASTLSTM_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
                   OPENBLAS_NUM_THREADS=str(threads))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fastlstm.bench.ort", "--worker", kind, case_file, str(threads), str(reps)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)

    def ask(self, cmd):
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        if not answer:
            raise RuntimeError(f"benchmark worker exited (status {self.proc.wait()})")
        return answer.strip()

    def close(self):
        with _quiet():
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
        self.proc.wait(timeout=30)


class _quiet:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return exc[0] is not None and issubclass(exc[0], OSError)


def measure(H, I, N, threads, rounds, reps, tmp):
    """One point: {"fastlstm": s, "ort": s, ...} medians over alternating rounds."""
    rng = np.random.default_rng(H * 7 + N)
    k = 1 / np.sqrt(H)
    w = {"W_ih": rng.uniform(-k, k, (4 * H, I)), "W_hh": rng.uniform(-k, k, (4 * H, H)),
         "b_ih": rng.uniform(-k, k, 4 * H), "b_hh": rng.uniform(-k, k, 4 * H)}
    w = {name: a.astype(np.float32) for name, a in w.items()}
    x = rng.standard_normal((T, N, I)).astype(np.float32)
    case_file = str(Path(tmp) / f"case_{H}_{I}_{N}.npz")
    model = np.frombuffer(onnx_model(**w), np.uint8)
    np.savez(case_file, x=x, model=model, **w)
    workers = {kind: Worker(kind, case_file, threads, reps) for kind in ("fastlstm", "ort")}
    try:
        for worker in workers.values():
            worker.ask("check")
        y = {kind: np.load(case_file + f".{kind}.npy") for kind in workers}
        err = float(np.max(np.abs(y["fastlstm"] - y["ort"])))
        if not err < AGREE:
            raise RuntimeError(f"H={H} N={N}: fastlstm and onnxruntime disagree by {err:.2e}")
        times = {kind: [] for kind in workers}
        for r in range(rounds):
            order = ("fastlstm", "ort") if r % 2 == 0 else ("ort", "fastlstm")
            for kind in order:
                times[kind].append(float(workers[kind].ask("go")))
                time.sleep(ROUND_PAUSE_S)
    finally:
        for worker in workers.values():
            worker.close()
    row = {"H": H, "I": I, "N": N, "T": T, "threads": threads, "max_abs_diff": err}
    wbytes = 4 * H * H * 4 * T
    for kind, ts in times.items():
        row[kind] = statistics.median(ts)
        row[f"{kind}_whh_gbs"] = wbytes / row[kind] / 1e9
    row["ratio"] = row["fastlstm"] / row["ort"]
    return row


def markdown(rows, info, command):
    lines = ["# fastlstm vs ONNX Runtime: forward at small batch (issue 15, item 5)", "",
             "One layer, T=100, float32, the same weights; each library in its own process, timed in "
             "alternating rounds; medians. Ratio = fastlstm time / ONNX Runtime time (below 1: fastlstm is "
             "faster); target at N=1: at most 1.0. W_hh GB/s: the bytes of W_hh read per step times T "
             "over the time. Both pack their weights once, before timing: ONNX Runtime when its session "
             "is created, fastlstm with `LSTM.inference_weights(\"float32\", packed=True)` (exact).", ""]
    lines += [f"Command: `{command}`", ""] + [f"- {k}: {v}" for k, v in info.items()]
    lines += ["", "| H | I | N | threads | fastlstm ms | ONNX Runtime ms | ratio | fastlstm W_hh GB/s "
              "| ORT W_hh GB/s | max abs diff |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['H']} | {r['I']} | {r['N']} | {r['threads']} | {1e3 * r['fastlstm']:.3f} "
                     f"| {1e3 * r['ort']:.3f} | {r['ratio']:.2f} | {r['fastlstm_whh_gbs']:.1f} "
                     f"| {r['ort_whh_gbs']:.1f} | {r['max_abs_diff']:.1e} |")
    at_n1 = [r for r in rows if r["N"] == 1]
    met = sum(r["ratio"] <= 1.0 for r in at_n1)
    lines += ["", f"N=1 points at or below 1.0x ONNX Runtime: {met} of {len(at_n1)}."]
    return "\n".join(lines) + "\n"


def main(threads_list, rounds, reps, out, command, points=POINTS, batches=BATCHES, log=print):
    from .grid import machine_info
    try:
        import onnxruntime
    except ImportError:
        raise SystemExit("--ort needs onnx and onnxruntime: pip install onnx onnxruntime") from None
    info = machine_info()
    info["onnxruntime"] = onnxruntime.__version__
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for threads in threads_list:
            for H, I in points:
                for N in batches:
                    row = measure(H, I, N, threads, rounds, reps, tmp)
                    rows.append(row)
                    log(f"H={H} I={I} N={N} threads={threads}: fastlstm {1e3 * row['fastlstm']:.3f} ms, "
                        f"ORT {1e3 * row['ort']:.3f} ms, ratio {row['ratio']:.2f}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ORT.md").write_text(markdown(rows, info, command))
    (out / "ort.json").write_text(json.dumps({"info": info, "command": command, "rows": rows}, indent=1))
    log(f"wrote {out / 'ORT.md'}")
    return rows


if __name__ == "__main__" and len(sys.argv) == 6 and sys.argv[1] == "--worker":
    _worker(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
