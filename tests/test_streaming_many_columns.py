"""StreamingMoments with many tracked columns (the tail buffer's per-entry staging, used above
ENTRY_COLUMNS columns once the buffer is full), tracked columns given as ranges, and chunks with
non-finite entries: tails, block norms and per-group counts against numpy on the stored
samples, whatever the chunking. Fixed seeds; the tails are exact (a top-T selection does no
arithmetic), the norms sums of squares (float64, ~1e-15 relative)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gradbench.core import tail_buffer
from gradbench.core.streaming import StreamingMoments, group_count

COLUMNS = 40
TRACKED = list(range(0, 12)) + list(range(20, 32))  # two ranges, as measure._layout makes
BLOCKS = [(0, 20), (20, 40)]
TAIL = 51


def samples(n: int, seed: int) -> np.ndarray:
    """Normal, exponential and Student-t (5 dof) columns in turn, with different scales."""
    rng = np.random.default_rng(seed)
    kinds = [rng.standard_normal, lambda k: rng.exponential(2.0, k),
             lambda k: rng.standard_t(5, k)]
    return np.stack([kinds[c % 3](n) * (1 + c / 10) for c in range(COLUMNS)], axis=1)


def stream(x: np.ndarray, chunk: int) -> StreamingMoments:
    acc = StreamingMoments(COLUMNS, samples=x.shape[0], tail_coords=torch.tensor(TRACKED),
                           tail_size=TAIL, blocks=BLOCKS)
    tensor = torch.from_numpy(x)
    for start in range(0, x.shape[0], chunk):
        acc.add(tensor[start:start + chunk])
    return acc


@pytest.fixture
def entry_merges(monkeypatch):
    """Counts the merges of staged entries (the per-entry path)."""
    calls = []
    original = tail_buffer._merge_entries

    def spy(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(tail_buffer, "_merge_entries", spy)
    return calls


@pytest.mark.parametrize("chunk", [7, 64, 1000])
def test_many_tracked_columns_keep_the_largest_deviations_and_norms(chunk, entry_merges):
    x = samples(6000, seed=11)
    acc = stream(x, chunk)
    tails = acc.tails()
    d = x - acc.groups().shift.numpy()
    assert tails.coords.tolist() == TRACKED and tails.deviations.shape == (TAIL, len(TRACKED))
    for index, column in enumerate(TRACKED):
        expected = np.sort(np.abs(d[:, column]))[-TAIL:]
        np.testing.assert_array_equal(np.sort(np.abs(tails.deviations[:, index].numpy())),
                                      expected)
        # Signed values: each kept value is one of the column's deviations.
        assert np.isin(tails.deviations[:, index].numpy(), d[:, column]).all()
    for block, (a, b) in enumerate(BLOCKS):
        expected = np.sort((d[:, a:b] ** 2).sum(1))[-TAIL:]
        np.testing.assert_allclose(np.sort(tails.block_norms(block).numpy()), expected,
                                   rtol=1e-12)
    assert entry_merges  # the per-entry path ran (2 x 40 columns > ENTRY_COLUMNS)


def test_tied_deviations_keep_the_largest_magnitudes():
    """Two-point columns: many deviations tie at the floor; whichever tied entries are kept,
    the kept magnitudes are the top T."""
    rng = np.random.default_rng(3)
    x = rng.choice([-1.0, 2.0, 5.0], size=(4000, COLUMNS), p=[0.6, 0.35, 0.05])
    acc = stream(x, 256)
    tails = acc.tails()
    d = x - acc.groups().shift.numpy()
    for index, column in enumerate(TRACKED):
        expected = np.sort(np.abs(d[:, column]))[-TAIL:]
        np.testing.assert_array_equal(np.sort(np.abs(tails.deviations[:, index].numpy())),
                                      expected)


@pytest.mark.parametrize("chunk", [64, 1000])
def test_non_finite_entries_are_counted_per_group_and_left_out_of_the_tails(chunk):
    x = samples(3000, seed=5)
    rng = np.random.default_rng(6)
    bad_rows = rng.choice(3000, size=40, replace=False)
    x[bad_rows[:20], 3] = np.nan
    x[bad_rows[20:], 25] = np.inf
    acc = stream(x, chunk)
    groups = acc.groups()
    label = np.arange(3000) * group_count(3000, COLUMNS) // 3000
    finite = np.isfinite(x)
    for g in range(groups.count.shape[0]):
        np.testing.assert_array_equal(groups.count[g].numpy(), finite[label == g].sum(0))
    moments = acc.moments()
    np.testing.assert_array_equal(moments.count.numpy(), finite.sum(0))
    np.testing.assert_array_equal(moments.nonfinite.numpy(), (~finite).sum(0))
    tails = acc.tails()
    assert torch.isfinite(tails.deviations).all() and torch.isfinite(tails.norms).all()
    d = np.where(finite, x - groups.shift.numpy(), 0.0)  # non-finite entries count as 0
    for index, column in enumerate(TRACKED):
        expected = np.sort(np.abs(d[:, column]))[-TAIL:]
        np.testing.assert_array_equal(np.sort(np.abs(tails.deviations[:, index].numpy())),
                                      expected)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("chunk", [7, 300])  # row-major (7 < 40 columns) and coordinate-major
def test_batched_slice_sums_are_bit_identical_to_slice_by_slice(chunk, dtype, monkeypatch):
    """A chunk spanning many groups takes its powers once (_batched_sums) instead of slice by
    slice; the results must not change by a single bit (the reductions are the same)."""
    from gradbench.core import streaming
    x = samples(3000, seed=9)
    x[5, 3] = np.nan  # one chunk through the masked path too

    def run(many: int) -> StreamingMoments:
        monkeypatch.setattr(streaming, "MANY_SLICES", many)
        acc = StreamingMoments(COLUMNS, samples=3000, tail_coords=torch.tensor(TRACKED),
                               tail_size=TAIL, blocks=BLOCKS)
        tensor = torch.from_numpy(x).to(dtype)
        if chunk > COLUMNS:  # coordinate-major chunks, as measure._stacked lays them out
            tensor = tensor.T.contiguous().T
        for start in range(0, 3000, chunk):
            acc.add(tensor[start:start + chunk])
        return acc

    batched, each = run(0), run(10**9)
    for a, b in [(batched.moments(), each.moments()), (batched.groups(), each.groups()),
                 (batched.tails(), each.tails())]:
        for field in vars(a):
            left, right = getattr(a, field), getattr(b, field)
            if isinstance(left, torch.Tensor):
                assert torch.equal(left.nan_to_num(), right.nan_to_num()), field


@pytest.mark.parametrize("columns", [TRACKED, [0, 20]])  # entry staging, row staging
def test_unscreened_staging_keeps_the_same_tails(columns, monkeypatch):
    """Off the CPU a full buffer stages every row (no host-side screen); run that path here:
    the same exact top-T as the screened one, and the same block norms."""
    x = samples(5000, seed=13)

    def run() -> StreamingMoments:
        acc = StreamingMoments(COLUMNS, samples=5000, tail_coords=torch.tensor(columns),
                               tail_size=TAIL, blocks=BLOCKS)
        tensor = torch.from_numpy(x)
        for start in range(0, 5000, 200):
            acc.add(tensor[start:start + 200])
        return acc

    screened = run().tails()
    monkeypatch.setattr(tail_buffer, "screens", lambda device: False)
    unscreened = run().tails()
    for index in range(len(columns)):
        np.testing.assert_array_equal(
            np.sort(np.abs(screened.deviations[:, index].numpy())),
            np.sort(np.abs(unscreened.deviations[:, index].numpy())))
    for block in range(len(BLOCKS)):
        np.testing.assert_array_equal(np.sort(screened.block_norms(block).numpy()),
                                      np.sort(unscreened.block_norms(block).numpy()))
