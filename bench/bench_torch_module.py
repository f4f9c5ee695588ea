"""fastlstm.torch.LSTM against torch.nn.LSTM inside PyTorch (issue 16's targets; a script).

1. The trainer benchmark's peer setup written in plain PyTorch: Embedding(67, 64) ->
   LSTM(300) x 2 (dropout 0.2) -> Linear(67), batch 64 x 100 characters, cross-entropy,
   Adam lr 2e-3; once with torch.nn.LSTM and once with fastlstm.torch.LSTM (one line
   differs). Characters per second of training steps.
2. PackedSequence input, T=100, N=64, I=H=256, lengths uniform in [1, 100]: forward +
   backward of the LSTM alone.

Both in one process, timed in alternating rounds (so a slow stretch of a shared machine
falls on both); medians. Appends a section to bench/TORCH_MODULE_RESULTS.md.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/bench_torch_module.py
"""

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.nn.utils.rnn import pack_padded_sequence

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import fastlstm.torch as ft  # noqa: E402
from fastlstm.bench.machine import append_section, cpu_name, paired_medians  # noqa: E402

RESULTS = HERE / "TORCH_MODULE_RESULTS.md"
V, E, H, L, T, N = 67, 64, 300, 2, 100, 64


class CharNet(torch.nn.Module):
    def __init__(self, lstm_cls):
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(V, E)
        self.lstm = lstm_cls(E, H, num_layers=L, dropout=0.2)
        self.drop = torch.nn.Dropout(0.2)
        self.out = torch.nn.Linear(H, V)

    def forward(self, ids):
        return self.out(self.drop(self.lstm(self.emb(ids))[0]))


def trainer(lstm_cls):
    net = CharNet(lstm_cls)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(1)

    def step():
        ids = torch.randint(0, V, (T + 1, N), generator=g)
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(ids[:-1]).reshape(-1, V), ids[1:].reshape(-1))
        loss.backward()
        opt.step()
    return step


def packed_case(lstm_cls):
    torch.manual_seed(2)
    m = lstm_cls(256, 256)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(100, 64, 256, generator=g)
    lengths = torch.randint(1, 101, (64,), generator=g)

    def run():
        xi = x.clone().requires_grad_(True)
        y, _ = m(pack_padded_sequence(xi, lengths, enforce_sorted=False))
        y.data.sum().backward()
    return run


def alternate(fns, rounds, reps):
    """{name: median seconds per call}: ``reps`` calls per round, ``rounds`` alternating
    rounds (machine.paired_medians)."""
    def repeated(f):
        def run():
            for _ in range(reps):
                f()
        return run
    medians = paired_medians([repeated(f) for f in fns.values()], 0.0, min_rounds=rounds, max_rounds=rounds)
    return {k: m / reps for k, m in zip(fns, medians)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    command = "python bench/bench_torch_module.py " + " ".join(argv if argv is not None else sys.argv[1:])
    train = alternate({"torch": trainer(torch.nn.LSTM), "fastlstm": trainer(ft.LSTM)}, args.rounds, args.reps)
    packed = alternate({"torch": packed_case(torch.nn.LSTM), "fastlstm": packed_case(ft.LSTM)},
                       args.rounds, args.reps)
    cps = {k: T * N / v for k, v in train.items()}
    lines = [f"## {time.strftime('%Y-%m-%d %H:%M')} UTC, {cpu_name()}, {args.threads} threads, "
             f"torch {torch.__version__}", "", f"Command: `{command}`; {args.rounds} alternating rounds of "
             f"{args.reps} calls, medians.", "",
             "| case | torch.nn.LSTM | fastlstm.torch.LSTM | ratio | target |", "|---|---|---|---|---|",
             f"| peer training step, chars/s | {cps['torch']:,.0f} | {cps['fastlstm']:,.0f} | "
             f"{cps['fastlstm'] / cps['torch']:.2f}x | >= 1.3x |",
             f"| PackedSequence fwd+bwd, ms | {1e3 * packed['torch']:.1f} | {1e3 * packed['fastlstm']:.1f} | "
             f"{packed['fastlstm'] / packed['torch']:.2f} | <= 0.4 |", ""]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        append_section(RESULTS, "fastlstm.torch.LSTM in PyTorch (issue 16)", "bench/bench_torch_module.py", text)


if __name__ == "__main__":
    main()
