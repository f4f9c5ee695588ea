"""Write the golden .npz fixtures of tests/test_golden.py from torch.nn.LSTM.

Needs PyTorch (not a dependency of fastlstm); the fixtures are committed and
read without it. Regenerate from the repository root with
``python tests/golden/make_golden.py`` (deterministic: fixed seeds).
"""

import os
import sys

import numpy as np

try:
    import torch
except ImportError:  # pragma: no cover - only run by hand
    sys.exit("make_golden.py needs PyTorch: pip install torch")

HERE = os.path.dirname(os.path.abspath(__file__))
SEED = 1234

# (name, T, N, I, H, L, bias, batch_first): each is written in float32 and float64.
CONFIGS = [
    ("L1", 4, 3, 5, 4, 1, True, False),
    ("L1_nobias", 4, 3, 5, 4, 1, False, False),
    ("L2", 4, 2, 3, 4, 2, True, False),
    ("L2_nobias", 3, 2, 4, 3, 2, False, False),
    ("L2_batch_first", 4, 3, 2, 3, 2, True, True),
    ("T1_N1", 1, 1, 3, 3, 2, True, False),
    ("I1", 5, 2, 1, 4, 2, True, False),
]

DTYPES = {"f32": (np.float32, torch.float32), "f64": (np.float64, torch.float64)}


def make_fixture(name, T, N, I, H, L, bias, batch_first, np_dtype, torch_dtype, seed):
    """Run torch.nn.LSTM forward and backward; return the arrays to save."""
    torch.manual_seed(seed)
    lstm = torch.nn.LSTM(I, H, num_layers=L, bias=bias, batch_first=batch_first).to(torch_dtype)
    x_shape = (N, T, I) if batch_first else (T, N, I)
    y_shape = (N, T, H) if batch_first else (T, N, H)

    def rand(*shape):
        return torch.randn(*shape, dtype=torch_dtype)

    x = rand(*x_shape).requires_grad_(True)
    h0 = (0.5 * rand(L, N, H)).requires_grad_(True)
    c0 = (0.5 * rand(L, N, H)).requires_grad_(True)
    dy, dh_n, dc_n = rand(*y_shape), rand(L, N, H), rand(L, N, H)

    y, (h_n, c_n) = lstm(x, (h0, c0))
    torch.autograd.backward([y, h_n, c_n], [dy, dh_n, dc_n])

    def arr(t):
        out = t.detach().cpu().numpy()
        assert out.dtype == np_dtype, (name, out.dtype)
        return out

    data = {
        "input_size": np.int64(I), "hidden_size": np.int64(H), "num_layers": np.int64(L),
        "bias": np.bool_(bias), "batch_first": np.bool_(batch_first),
        "torch_version": np.str_(torch.__version__),
        "x": arr(x), "h0": arr(h0), "c0": arr(c0),
        "dy": arr(dy), "dh_n": arr(dh_n), "dc_n": arr(dc_n),
        "y": arr(y), "h_n": arr(h_n), "c_n": arr(c_n),
        "dx": arr(x.grad), "dh0": arr(h0.grad), "dc0": arr(c0.grad),
    }
    for pname, p in lstm.named_parameters():
        data[pname] = arr(p)
        data[f"grad_{pname}"] = arr(p.grad)
    return data


def main():
    torch.use_deterministic_algorithms(True)
    total = 0
    for k, (name, T, N, I, H, L, bias, batch_first) in enumerate(CONFIGS):
        for suffix, (np_dtype, torch_dtype) in DTYPES.items():
            data = make_fixture(name, T, N, I, H, L, bias, batch_first, np_dtype, torch_dtype,
                                SEED + k)
            path = os.path.join(HERE, f"lstm_{name}_{suffix}.npz")
            np.savez_compressed(path, **data)
            total += os.path.getsize(path)
            print(f"wrote {os.path.relpath(path)} ({os.path.getsize(path)} bytes)")
    print(f"total {total} bytes")


if __name__ == "__main__":
    main()
