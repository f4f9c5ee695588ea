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
# The rest of torch.nn.LSTM: (name, T, N, I, H, L, batch_first, bidirectional, proj_size,
# lengths or None); packed with enforce_sorted=False, padded back to T.
OPTION_CONFIGS = [
    ("bidir_L2", 5, 3, 3, 4, 2, False, True, 0, None),
    ("proj_L2", 4, 3, 3, 5, 2, False, False, 2, None),
    ("lengths_L2", 5, 4, 3, 4, 2, False, False, 0, [5, 1, 3, 2]),
    ("bidir_lengths_L2", 5, 4, 2, 3, 2, False, True, 0, [2, 5, 1, 4]),
    ("bidir_proj_lengths_L3_batch_first", 4, 4, 3, 5, 3, True, True, 3, [4, 2, 1, 3]),
]

DTYPES = {"f32": (np.float32, torch.float32), "f64": (np.float64, torch.float64)}


def make_fixture(name, T, N, I, H, L, bias, batch_first, np_dtype, torch_dtype, seed,
                 bidirectional=False, proj_size=0, lengths=None):
    """Run torch.nn.LSTM forward and backward; return the arrays to save."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
    torch.manual_seed(seed)
    lstm = torch.nn.LSTM(I, H, num_layers=L, bias=bias, batch_first=batch_first,
                         bidirectional=bidirectional, proj_size=proj_size).to(torch_dtype)
    D, K = (2 if bidirectional else 1), (proj_size or H)
    x_shape = (N, T, I) if batch_first else (T, N, I)
    y_shape = (N, T, D * K) if batch_first else (T, N, D * K)

    def rand(*shape):
        return torch.randn(*shape, dtype=torch_dtype)

    x = rand(*x_shape).requires_grad_(True)
    h0 = (0.5 * rand(D * L, N, K)).requires_grad_(True)
    c0 = (0.5 * rand(D * L, N, H)).requires_grad_(True)
    dy, dh_n, dc_n = rand(*y_shape), rand(D * L, N, K), rand(D * L, N, H)

    if lengths is None:
        y, (h_n, c_n) = lstm(x, (h0, c0))
    else:
        packed = pack_padded_sequence(x, torch.tensor(lengths), batch_first=batch_first,
                                      enforce_sorted=False)
        out, (h_n, c_n) = lstm(packed, (h0, c0))
        y, _ = pad_packed_sequence(out, batch_first=batch_first, total_length=T)
    torch.autograd.backward([y, h_n, c_n], [dy, dh_n, dc_n])

    def arr(t):
        out = t.detach().cpu().numpy()
        assert out.dtype == np_dtype, (name, out.dtype)
        return out

    data = {
        "input_size": np.int64(I), "hidden_size": np.int64(H), "num_layers": np.int64(L),
        "bias": np.bool_(bias), "batch_first": np.bool_(batch_first),
        "bidirectional": np.bool_(bidirectional), "proj_size": np.int64(proj_size),
        "torch_version": np.str_(torch.__version__),
        "x": arr(x), "h0": arr(h0), "c0": arr(c0),
        "dy": arr(dy), "dh_n": arr(dh_n), "dc_n": arr(dc_n),
        "y": arr(y), "h_n": arr(h_n), "c_n": arr(c_n),
        "dx": arr(x.grad), "dh0": arr(h0.grad), "dc0": arr(c0.grad),
    }
    if lengths is not None:
        data["lengths"] = np.asarray(lengths, np.int64)
    for pname, p in lstm.named_parameters():
        data[pname] = arr(p)
        data[f"grad_{pname}"] = arr(p.grad)
    return data


def save(name, suffix, data):
    path = os.path.join(HERE, f"lstm_{name}_{suffix}.npz")
    np.savez_compressed(path, **data)
    print(f"wrote {os.path.relpath(path)} ({os.path.getsize(path)} bytes)")
    return os.path.getsize(path)


def main():
    torch.use_deterministic_algorithms(True)
    total = 0
    for k, (name, T, N, I, H, L, bias, batch_first) in enumerate(CONFIGS):
        for suffix, (np_dtype, torch_dtype) in DTYPES.items():
            data = make_fixture(name, T, N, I, H, L, bias, batch_first, np_dtype, torch_dtype,
                                SEED + k)
            total += save(name, suffix, data)
    for k, (name, T, N, I, H, L, batch_first, bidir, proj, lengths) in enumerate(OPTION_CONFIGS):
        for suffix, (np_dtype, torch_dtype) in DTYPES.items():
            data = make_fixture(name, T, N, I, H, L, True, batch_first, np_dtype, torch_dtype,
                                SEED + 100 + k, bidirectional=bidir, proj_size=proj, lengths=lengths)
            total += save(name, suffix, data)
    print(f"total {total} bytes")


if __name__ == "__main__":
    main()
