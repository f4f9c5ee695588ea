"""Peak memory of one training forward+backward: fastlstm (C backend) against torch.nn.LSTM.

Each (library, configuration) runs in its own subprocess: build the layer and
the inputs, run a tiny step (so that lazy, once-per-process library set-up is
not counted), note the resident set size, run forward(training) + backward
once, and report the growth of the peak resident set size (VmHWM, reset to the
current size just before the step through /proc/self/clear_refs) over
that baseline: the memory the training step itself needed. Writes a markdown
table.

    python bench/bench_memory.py --out bench/MEMORY_RESULTS.md
"""

import argparse
import datetime
import json
import platform
import subprocess
import sys

CONFIGS = {  # name: (T, N, I, H, L)
    "tutorial N30 I64": (50, 30, 64, 300, 2),
    "tutorial N128 I64": (50, 128, 64, 300, 2),
    "1x512 N128": (100, 128, 512, 512, 1),
    "1x1024 N32": (100, 32, 1024, 1024, 1),
    "1x1024 N128": (100, 128, 1024, 1024, 1),
}

CHILD = r"""
import json, resource, sys
import numpy as np
lib, T, N, I, H, L = sys.argv[1], *map(int, sys.argv[2:7])

def rss_kib():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() // 1024

rng = np.random.default_rng(0)
x = rng.standard_normal((T, N, I)).astype(np.float32)
dy = rng.standard_normal((T, N, H)).astype(np.float32)
if lib == "torch":
    import torch
    torch.set_num_threads(2)
    layer = torch.nn.LSTM(I, H, L)
    def step(x, dy):
        y, _ = layer(torch.from_numpy(x).requires_grad_(True))
        y.backward(torch.from_numpy(dy))
else:
    import fastlstm
    layer = fastlstm.LSTM(I, H, L, backend="c")
    def step(x, dy):
        y, _ = layer.forward(x, training=True)
        layer.backward(dy)
# A tiny step first: libraries load and size their thread pools and BLAS buffers
# lazily, once per process; that is not the memory of a training step.
step(x[:2, :2].copy(), dy[:2, :2].copy())
def hwm_kib():
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))
# Reset the peak (VmHWM) to the current size: imports may have peaked higher.
with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")
base = rss_kib()
step(x, dy)
print(json.dumps({"base_kib": base, "peak_kib": hwm_kib()}))
"""


def measure(lib, cfg):
    out = subprocess.run([sys.executable, "-c", CHILD, lib, *map(str, cfg)], capture_output=True,
                         text=True, timeout=600, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    return max(0, r["peak_kib"] - max(r["base_kib"], 0)) / 1024


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", help="markdown file to write (default: print only)")
    args = ap.parse_args(argv)
    try:
        import torch
        have_torch = True
        torch_version = torch.__version__
    except ImportError:
        have_torch, torch_version = False, "absent"
    import fastlstm
    rows = []
    for name, cfg in CONFIGS.items():
        T, N, I, H, L = cfg
        saved = 4 * T * N * (4 * H + 2 * H) * L / 2**20  # gates, c_t, y per layer (float32)
        ours = measure("fastlstm", cfg)
        theirs = measure("torch", cfg) if have_torch else float("nan")
        rows.append((name, cfg, saved, ours, theirs))
        print(f"{name:20s} fastlstm {ours:8.1f} MiB  torch {theirs:8.1f} MiB  ratio {ours / theirs:.2f}",
              flush=True)
    lines = [
        f"# Peak memory of one training forward+backward ({datetime.date.today().isoformat()})",
        "",
        "Growth of the peak resident set size (VmHWM, reset through /proc/self/clear_refs) over the "
        "resident size just before the step (layer and inputs built, one tiny step run for the "
        "libraries' lazy set-up), each library and configuration in its own process; "
        "float32, 2 threads. `saved` is what a forward pass keeps for backward by arithmetic "
        "(activated gates, c_t and h_t: 6·T·N·H floats per layer).",
        "",
        f"Command: `python bench/bench_memory.py --out bench/MEMORY_RESULTS.md`; fastlstm "
        f"{fastlstm.__version__}, torch {torch_version}, Python {platform.python_version()}, "
        f"{platform.platform()}",
        "",
        "| case | T, N, I, H, L | saved MiB | fastlstm MiB | torch MiB | fastlstm / torch |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for name, cfg, saved, ours, theirs in rows:
        lines.append(f"| {name} | {', '.join(map(str, cfg))} | {saved:.1f} | {ours:.1f} | {theirs:.1f} "
                     f"| {ours / theirs:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text)


if __name__ == "__main__":
    main()
