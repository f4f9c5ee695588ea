"""fastlstm/backends/_steps.py's StepOrder (the padded batch <-> rows in step order of the
C backend's lengths and reverse paths) and its row movers: NumPy's ``move_rows`` and the C
backend's ``move_rows`` (one pass, on threads for large copies) give exactly the rows of
plain fancy indexing, zeros at padded positions, for float32 and float64; bad indices and
shapes are errors that name them."""

import numpy as np
import pytest

from fastlstm.backends import _steps, available_backends, get_backend

MOVERS = [pytest.param(_steps.move_rows, id="numpy")]
if "c" in available_backends():
    MOVERS.append(pytest.param(get_backend("c").move_rows, id="c"))


def _expected(src_rows, src):
    out = np.zeros((len(src_rows), src.shape[1]), src.dtype)
    ok = src_rows >= 0
    out[ok] = src[src_rows[ok]]
    return out


@pytest.mark.parametrize("move", MOVERS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rows,F", [(7, 5), (3000, 64)], ids=["small", "threaded"])
def test_move_rows_gathers_rows_and_zeros_the_unmapped(move, dtype, rows, F):
    rng = np.random.default_rng(rows)
    src = rng.standard_normal((rows // 2 + 1, F)).astype(dtype)
    src_rows = rng.integers(-1, len(src), size=rows).astype(np.int64)
    dst = np.full((rows, F), np.nan, dtype)
    move(src_rows, src, dst)
    np.testing.assert_array_equal(dst, _expected(src_rows, src))
    every = rng.integers(0, len(src), size=rows).astype(np.int64)  # a pure gather
    move(every, src, dst)
    np.testing.assert_array_equal(dst, src[every])


@pytest.mark.parametrize("move", MOVERS)
def test_move_rows_of_nothing_and_from_nothing(move):
    move(np.zeros(0, np.int64), np.ones((3, 4), np.float32), np.ones((0, 4), np.float32))
    dst = np.ones((2, 4), np.float32)
    move(np.array([-1, -1], np.int64), np.ones((0, 4), np.float32), dst)
    np.testing.assert_array_equal(dst, 0)


@pytest.mark.skipif("c" not in available_backends(), reason="the C backend is not built")
def test_c_move_rows_refuses_bad_rows_and_shapes():
    move = get_backend("c").move_rows
    src = np.ones((3, 4), np.float32)
    dst = np.empty((2, 4), np.float32)
    with pytest.raises(IndexError, match="source row 3 at row 1"):
        move(np.array([0, 3], np.int64), src, dst)
    with pytest.raises(IndexError, match="source row -2 at row 0"):
        move(np.array([-2, 0], np.int64), src, dst)
    with pytest.raises(ValueError, match="move_rows: src_rows 3"):
        move(np.zeros(3, np.int64), src, dst)
    with pytest.raises(ValueError, match="move_rows"):
        move(np.zeros(2, np.int64), src, np.empty((2, 5), np.float32))


def _step_rows(lengths):
    """(s, n) of every packed row, by definition: step s runs the rows longer than s,
    longest first (ties in batch order)."""
    perm = np.argsort(-lengths, kind="stable")
    return [(s, n) for s in range(lengths.max()) for n in perm if lengths[n] > s]


@pytest.mark.parametrize("move", MOVERS)
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_step_order_packs_and_unpacks_as_defined(move, reverse):
    T, N, F = 6, 5, 3
    lengths = np.array([4, 6, 0, 1, 6])
    rng = np.random.default_rng(1)
    a = rng.standard_normal((T, N, F)).astype(np.float32)
    order = _steps.StepOrder(lengths, T, N, reverse, move)
    packed = order.packed(a)
    # each row at its own time index
    want = [a[(lengths[n] - 1 - s) if reverse else s, n] for s, n in _step_rows(lengths)]
    np.testing.assert_array_equal(packed, np.array(want))
    back = np.full((T, N, F), np.nan, np.float32)
    order.unpack(packed, back)
    inside = np.arange(T)[:, None] < lengths[None, :]
    np.testing.assert_array_equal(back[inside], a[inside])
    np.testing.assert_array_equal(back[~inside], 0)
    strided = np.full((T, N, 2 * F), np.nan, np.float32)[..., ::2]  # not contiguous: NumPy path
    order.unpack(packed, strided)
    np.testing.assert_array_equal(strided, back)


@pytest.mark.parametrize("move", MOVERS)
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_step_order_h_prev_is_each_rows_state_one_step_before(move, reverse):
    T, N, K = 6, 5, 3
    lengths = np.array([4, 6, 2, 1, 6])
    rng = np.random.default_rng(2)
    y = rng.standard_normal((T, N, K)).astype(np.float32)
    h0 = rng.standard_normal((N, K)).astype(np.float32)
    order = _steps.StepOrder(lengths, T, N, reverse, move)
    # step 0 reads h0, step s the time index of step s - 1
    want = [h0[n] if s == 0 else y[(lengths[n] - s) if reverse else s - 1, n]
            for s, n in _step_rows(lengths)]
    np.testing.assert_array_equal(order.h_prev(h0, y), np.array(want))
    np.testing.assert_array_equal(order.h_prev(h0, np.asfortranarray(y)), np.array(want))
