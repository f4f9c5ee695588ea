"""fastlstm/_dropout.py's one-pass dropout: ``apply_keep`` on ``keep_bits``' draws gives,
bit for bit, what multiplying by ``keep_mask`` and the scale gives (signed zeros, NaN and
infinities included), on the C backend's pass and on NumPy's, float32 and float64, with
the mask written or not, in place, and on a batch_rows slice of the draws; the layer and
the char model's Dropout keep their numbers; the random words under the masks are
SplitMix64's, the same on both passes."""

import numpy as np
import pytest

from fastlstm import _dropout
from fastlstm.backends import available_backends

HAVE_C = "c" in available_backends()
# the inputs hold infinities on purpose: inf * 0 is NaN (and NumPy says so)
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")


def _inputs(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)
    x.flat[:4] = [np.nan, np.inf, -np.inf, -0.0]
    return x


@pytest.fixture(params=["c", "numpy"])
def pass_kind(request, monkeypatch):
    if request.param == "c" and not HAVE_C:
        pytest.skip("the C backend is not built")
    if request.param == "numpy":
        monkeypatch.setattr(_dropout, "_c_pass", lambda name: None)
    return request.param


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(3, 5, 7), (40, 64, 300)], ids=["small", "threaded"])
def test_apply_keep_is_the_mask_times_the_scale_bit_for_bit(pass_kind, dtype, shape):
    p = 0.3
    x = _inputs(shape, dtype)
    scale = dtype(1.0 / (1.0 - p))
    want = np.multiply(x, _dropout.keep_mask(np.random.default_rng(7), shape, p)) * scale
    want_mask = _dropout.keep_mask(np.random.default_rng(7), shape, p) * scale
    bits, threshold = _dropout.keep_bits(np.random.default_rng(7), shape, p)
    mask = np.full(shape, 5, dtype)
    y = _dropout.apply_keep(bits, threshold, scale, x, mask=mask)
    assert y.dtype == dtype
    np.testing.assert_array_equal(y.view(f"u{y.itemsize}"), want.view(f"u{y.itemsize}"))  # -0.0 too
    np.testing.assert_array_equal(mask, want_mask)
    inplace = x.copy()
    assert _dropout.apply_keep(bits, threshold, scale, inplace, out=inplace) is inplace
    np.testing.assert_array_equal(inplace.view(f"u{y.itemsize}"), want.view(f"u{y.itemsize}"))


def test_apply_keep_on_some_rows_of_the_draws(pass_kind):
    # inside batch_rows the bits are a slice of the whole batch's (not contiguous)
    shape, rows = (6, 8, 5), (2, 5, 8)
    with _dropout.batch_rows(*rows):
        bits, threshold = _dropout.keep_bits(np.random.default_rng(3), (6, 3, 5), 0.5)
    assert not bits.flags.c_contiguous
    x = _inputs((6, 3, 5), np.float32)
    whole = _dropout.keep_mask(np.random.default_rng(3), shape, 0.5)[:, 2:5]
    np.testing.assert_array_equal(_dropout.apply_keep(bits, threshold, 2.0, x), (x * whole) * np.float32(2))


@pytest.mark.skipif(not HAVE_C, reason="the C backend is not built")
def test_c_dropout_refuses_arrays_of_other_lengths():
    from fastlstm.backends import _c
    bits = np.zeros(4, np.uint16)
    with pytest.raises(ValueError, match="dropout: bits 4, x 3, y 3: lengths differ"):
        _c.dropout(bits, 1, 1.0, np.ones(3, np.float32), np.ones(3, np.float32))
    with pytest.raises(ValueError, match="mask 2"):
        _c.dropout(bits, 1, 1.0, np.ones(4), np.ones(4), np.ones(2))


def test_char_model_dropout_forward_and_backward_keep_their_numbers(pass_kind):
    from fastlstm.charlm.nn import Dropout
    x = _inputs((4, 6, 9), np.float32)
    layer = Dropout(0.25, seed=11)
    y = layer.forward(x, training=True)
    dy = _inputs((4, 6, 9), np.float32, seed=1)
    dx = layer.backward(dy)
    keep = _dropout.keep_mask(np.random.default_rng(11), x.shape, 0.25)
    scale = np.float32(1 / 0.75)
    np.testing.assert_array_equal(y, (x * keep) * scale)
    np.testing.assert_array_equal(dx, (dy * keep) * scale)
    assert layer.forward(x) is x  # inference: unchanged
    assert layer.backward(dy) is dy


def _splitmix64(state, n):
    """SplitMix64 written plainly on Python integers: (state, the next n outputs)."""
    out = []
    for _ in range(n):
        state = (state + 0x9E3779B97F4A7C15) % 2**64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % 2**64
        out.append(z ^ (z >> 31))
    return out


@pytest.mark.parametrize("key", [0, 1, 2**63 + 12345, 2**64 - 1])
def test_random_words_are_splitmix64_on_both_passes(pass_kind, key):
    want = np.array(_splitmix64(key, 37), np.uint64)
    np.testing.assert_array_equal(_dropout.random_words(key, 37), want)
    assert _dropout.random_words(key, 0).shape == (0,)


def test_random_words_agree_between_the_passes_at_a_threaded_size(monkeypatch):
    n = 300_001
    first = _dropout.random_words(2**40 + 7, n)
    monkeypatch.setattr(_dropout, "_c_pass", lambda name: None)
    np.testing.assert_array_equal(_dropout.random_words(2**40 + 7, n), first)


def test_keep_bits_draws_one_word_per_mask_and_keeps_one_minus_p(pass_kind):
    rng, twin = np.random.default_rng(5), np.random.default_rng(5)
    bits, threshold = _dropout.keep_bits(rng, (50, 40, 30), 0.3)
    twin.bit_generator.random_raw()
    assert rng.bit_generator.state == twin.bit_generator.state
    keep = bits >= threshold
    # 60,000 draws: the kept fraction within 5 standard deviations of 0.7
    assert abs(keep.mean() - 0.7) < 5 * np.sqrt(0.7 * 0.3 / keep.size)
    # and each of the 16 bits of a draw is a fair coin
    for b in range(16):
        ones = ((bits >> np.uint16(b)) & np.uint16(1)).mean()
        assert abs(ones - 0.5) < 5 * np.sqrt(0.25 / bits.size)


def test_keep_bits_into_a_reused_buffer_gives_the_same_draws(pass_kind):
    shape = (7, 6, 5)
    want, threshold = _dropout.keep_bits(np.random.default_rng(9), shape, 0.4)
    words = np.empty(_dropout.words_needed(shape), np.uint64)
    bits, threshold2 = _dropout.keep_bits(np.random.default_rng(9), shape, 0.4, words)
    assert threshold2 == threshold and np.shares_memory(bits, words)
    np.testing.assert_array_equal(bits, want)
    # a buffer of another size is not used
    other = np.zeros(3, np.uint64)
    bits, _ = _dropout.keep_bits(np.random.default_rng(9), shape, 0.4, other)
    assert not np.shares_memory(bits, other) and not other.any()
    np.testing.assert_array_equal(bits, want)
    # inside batch_rows the buffer holds the whole batch's draws
    with _dropout.batch_rows(1, 4, 6):
        n = _dropout.words_needed(shape[:-2] + (3, shape[-1]))
        part, _ = _dropout.keep_bits(np.random.default_rng(9), (7, 3, 5), 0.4, np.empty(n, np.uint64))
    assert n == _dropout.words_needed(shape)
    np.testing.assert_array_equal(part, want[:, 1:4])
