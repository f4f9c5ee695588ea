"""fastlstm.torch.LSTM against torch.nn.LSTM on the same weights: outputs, states,
input and parameter gradients (float32 to 1e-5 relative, float64 through gradcheck),
padded and PackedSequence input, batch_first, bidirectional, proj_size, unbatched,
a few Adam steps of a small model, the fallback to torch and its warning, and the
double-backward error. Skips without torch."""

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402

import fastlstm.torch as ft  # noqa: E402

REL = 1e-5


def rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / max(float(b.norm()), 1e-30))


def pair(dtype=torch.float32, **kw):
    torch.manual_seed(0)
    ref = torch.nn.LSTM(**kw).to(dtype)
    ours = ft.LSTM(**kw).to(dtype)
    ours.load_state_dict(ref.state_dict())   # a torch.nn.LSTM state_dict, unchanged
    return ours, ref


CASES = {
    "plain": dict(input_size=5, hidden_size=7),
    "layers2_batch_first": dict(input_size=5, hidden_size=7, num_layers=2, batch_first=True),
    "bidir": dict(input_size=5, hidden_size=6, num_layers=2, bidirectional=True),
    "proj": dict(input_size=5, hidden_size=8, proj_size=3, num_layers=2),
    "bidir_proj_bf": dict(input_size=4, hidden_size=6, proj_size=2, bidirectional=True, batch_first=True),
    "nobias": dict(input_size=5, hidden_size=7, bias=False),
}


def run(m, x, hx, backward=True):
    y, (h, c) = m(x, hx)
    if not backward:
        return y, h, c
    data = y.data if hasattr(y, "batch_sizes") else y
    (data.square().sum() + 0.5 * h.sum() + 0.25 * c.square().sum()).backward()
    return y, h, c


@pytest.mark.parametrize("name", CASES)
def test_matches_torch_padded(name):
    kw = CASES[name]
    ours, ref = pair(**kw)
    T, N = 6, 3
    D = 2 if kw.get("bidirectional") else 1
    L = kw.get("num_layers", 1)
    H_out = kw.get("proj_size") or kw["hidden_size"]
    g = torch.Generator().manual_seed(1)
    shape = (N, T, kw["input_size"]) if kw.get("batch_first") else (T, N, kw["input_size"])
    x0 = torch.randn(shape, generator=g)
    hx0 = (torch.randn(D * L, N, H_out, generator=g), torch.randn(D * L, N, kw["hidden_size"], generator=g))
    got, want = [], []
    for m, out in ((ours, got), (ref, want)):
        x = x0.clone().requires_grad_(True)
        hx = tuple(t.clone().requires_grad_(True) for t in hx0)
        y, h, c = run(m, x, hx)
        out += [y, h, c, x.grad, hx[0].grad, hx[1].grad] + [p.grad for p in m.parameters()]
    for a, b in zip(got, want):
        assert a.shape == b.shape
        assert rel(a, b) < REL


def test_packed_sequence_in_and_out():
    ours, ref = pair(input_size=4, hidden_size=5, num_layers=2, bidirectional=True)
    T, N = 7, 4
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(T, N, 4, generator=g)
    lengths = torch.tensor([3, 7, 1, 5])
    got, want = [], []
    for m, out in ((ours, got), (ref, want)):
        x = x0.clone().requires_grad_(True)
        packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
        y, (h, c) = m(packed)
        assert torch.equal(y.batch_sizes, packed.batch_sizes)
        assert torch.equal(y.sorted_indices, packed.sorted_indices)
        (y.data.square().sum() + h.sum()).backward()
        out += [y.data, pad_packed_sequence(y)[0], h, c, x.grad] + [p.grad for p in m.parameters()]
    for a, b in zip(got, want):
        assert rel(a, b) < REL


@pytest.mark.parametrize("kw", [dict(input_size=4, hidden_size=5, num_layers=2),
                                dict(input_size=4, hidden_size=6, proj_size=2, num_layers=3, bias=False)],
                         ids=["L2", "proj-L3-nobias"])
@pytest.mark.parametrize("sort", [False, True], ids=["unsorted", "enforce_sorted"])
def test_packed_sequence_one_direction_runs_on_its_rows(kw, sort):
    ours, ref = pair(**kw)
    T, N, L = 7, 5, kw["num_layers"]
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(T, N, 4, generator=g)
    lengths = torch.tensor([7, 6, 6, 3, 1] if sort else [3, 7, 1, 6, 6])
    hx0 = (torch.randn(L, N, kw.get("proj_size") or kw["hidden_size"], generator=g),
           torch.randn(L, N, kw["hidden_size"], generator=g))
    got, want = [], []
    for m, out in ((ours, got), (ref, want)):
        x = x0.clone().requires_grad_(True)
        hx = tuple(t.clone().requires_grad_(True) for t in hx0)
        y, (h, c) = m(pack_padded_sequence(x, lengths, enforce_sorted=sort), hx)
        (y.data.square().sum() + h.sum() + 0.5 * c.square().sum()).backward()
        out += [y.data, h, c, x.grad, hx[0].grad, hx[1].grad] + [p.grad for p in m.parameters()]
    for a, b in zip(got, want):
        assert a.shape == b.shape and rel(a, b) < REL


def test_packed_sequence_one_direction_gradcheck_and_retained_graph():
    torch.manual_seed(5)
    m = ft.LSTM(3, 4, num_layers=2).double()
    lengths = torch.tensor([2, 4, 1])
    x = torch.randn(4, 3, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)

    def f(x, h0):
        y, (h, c) = m(pack_padded_sequence(x, lengths, enforce_sorted=False), (h0, torch.zeros_like(h0)))
        return y.data, h, c

    assert torch.autograd.gradcheck(f, (x, h0), eps=1e-6, atol=1e-7)
    y, h, c = f(x, h0)
    loss = y.square().sum() + h.sum()
    first = torch.autograd.grad(loss, [x, *m.parameters()], retain_graph=True)
    again = torch.autograd.grad(loss, [x, *m.parameters()])
    for a, b in zip(first, again):
        assert torch.equal(a, b)


def test_unbatched_input():
    ours, ref = pair(input_size=3, hidden_size=4)
    x = torch.randn(5, 3)
    for a, b in zip(run(ours, x, None, backward=False), run(ref, x, None, backward=False)):
        assert a.shape == b.shape and rel(a, b) < REL


def test_gradcheck_float64():
    torch.manual_seed(3)
    m = ft.LSTM(3, 4, num_layers=2, bidirectional=True).double()
    x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(4, 2, 4, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(4, 2, 4, dtype=torch.float64, requires_grad=True)

    def f(x, h0, c0, *params):
        y, (h, c) = m(x, (h0, c0))
        return y, h, c

    assert torch.autograd.gradcheck(f, (x, h0, c0), eps=1e-6, atol=1e-7)
    # parameters too: through the module's own tensors
    y, (h, c) = m(x, (h0, c0))
    grads = torch.autograd.grad(y.sum() + h.sum() + c.sum(), list(m.parameters()))
    ref = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True).double()
    ref.load_state_dict(m.state_dict())
    y2, (h2, c2) = ref(x, (h0, c0))
    grads2 = torch.autograd.grad(y2.sum() + h2.sum() + c2.sum(), list(ref.parameters()))
    for a, b in zip(grads, grads2):
        assert rel(a, b) < 1e-12


class CharNet(torch.nn.Module):
    def __init__(self, lstm_cls):
        super().__init__()
        torch.manual_seed(4)
        self.emb = torch.nn.Embedding(20, 8)
        self.lstm = lstm_cls(8, 16, num_layers=2, batch_first=True)
        self.out = torch.nn.Linear(16, 20)

    def forward(self, ids):
        return self.out(self.lstm(self.emb(ids))[0])


def test_adam_steps_give_torchs_losses():
    g = torch.Generator().manual_seed(5)
    batches = [torch.randint(0, 20, (4, 12), generator=g) for _ in range(5)]
    losses = {}
    for cls in (torch.nn.LSTM, ft.LSTM):
        net = CharNet(cls)
        opt = torch.optim.Adam(net.parameters(), lr=1e-2)
        seen = []
        for ids in batches:
            opt.zero_grad()
            logits = net(ids[:, :-1])
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 20), ids[:, 1:].reshape(-1))
            loss.backward()
            opt.step()
            seen.append(loss.item())
        losses[cls] = seen
    np.testing.assert_allclose(losses[ft.LSTM], losses[torch.nn.LSTM], rtol=1e-5)


def test_other_dtypes_fall_back_to_torch_with_a_warning():
    m = ft.LSTM(3, 4).to(torch.bfloat16)
    ref = torch.nn.LSTM(3, 4).to(torch.bfloat16)
    ref.load_state_dict(m.state_dict())
    x = torch.randn(5, 2, 3).to(torch.bfloat16)
    with pytest.warns(RuntimeWarning, match="torch.nn.LSTM"):
        y, _ = m(x)
    assert torch.equal(y, ref(x)[0])


def test_double_backward_is_an_error():
    m = ft.LSTM(3, 4).double()
    x = torch.randn(3, 2, 3, dtype=torch.float64, requires_grad=True)
    y, _ = m(x)
    (gx,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError):
        gx.sum().backward()


def test_eval_mode_has_no_dropout_and_copies_work():
    m = ft.LSTM(3, 4, num_layers=2, dropout=0.5)
    m.eval()
    x = torch.randn(5, 2, 3)
    y1, _ = m(x)
    y2, _ = m(x)
    assert torch.equal(y1, y2)
    ref = torch.nn.LSTM(3, 4, num_layers=2, dropout=0.5).eval()
    ref.load_state_dict(m.state_dict())
    assert rel(y1, ref(x)[0]) < REL
    clone = copy.deepcopy(m)
    assert torch.equal(clone(x)[0], y1)


def test_packed_sequence_on_the_numpy_backend_and_bad_states(monkeypatch):
    ours, ref = pair(input_size=3, hidden_size=4, num_layers=2)
    x = torch.randn(5, 3, 3)
    packed = pack_padded_sequence(x, torch.tensor([2, 5, 4]), enforce_sorted=False)
    want = ref(packed)
    with pytest.raises(RuntimeError, match="hidden"):
        ours(packed, (torch.zeros(2, 2, 4), torch.zeros(2, 2, 4)))
    monkeypatch.setenv("FASTLSTM_BACKEND", "numpy")  # no row loops: the padded route
    got = ours(packed)
    for a, b in zip((got[0].data, *got[1]), (want[0].data, *want[1])):
        assert rel(a, b) < REL
