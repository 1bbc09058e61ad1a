"""Which rows make each step's batch in fit under MPI, and reading them from shards.

The batch rule (:func:`epoch_plan`) gives every rank the same number of steps whatever the
sizes of the shards; shards may be memory-mapped ``.npy`` files, which are checked chunk by
chunk and read one batch at a time, never copied whole.
"""
import numpy as np

from cbn import _validation as check

# Shards are checked in pieces of this many bytes, so a memory map is never read whole.
_CHECK_CHUNK_BYTES = 64 << 20


# ---- the batch rule of fit ------------------------------------------------------------------

def step_count(n_total, batch_size):
    """S, the number of steps of an epoch over n_total rows: one process's count of
    batch_size-row batches, a 1-row remainder joining the batch before it."""
    steps = -(-n_total // batch_size)
    if steps > 1 and n_total - (steps - 1) * batch_size == 1:
        steps -= 1
    return max(steps, 1)


def part_bounds(counts, rank, steps):
    """Where the s-th of S near-equal slices of rank's shard starts, for s = 0..S.

    Rank r's slices are shifted by the phase ``S * offset_r // N`` (offset_r: the rows of
    the ranks before it), so ranks with small shards contribute to different steps and no
    global batch is left with too few rows.
    """
    counts = np.asarray(counts, np.int64)
    n_total = int(counts.sum())
    n = int(counts[rank])
    phase = (steps * int(counts[:rank].sum())) // max(n_total, 1)
    s = np.arange(steps + 1, dtype=np.int64)
    return (s * n + phase) // steps


def global_batch_sizes(counts, steps):
    """Rows of every step's global batch under the batch rule."""
    return sum(np.diff(part_bounds(counts, r, steps)) for r in range(len(counts)))


def epoch_plan(counts, rank, batch_size, key, epoch, shuffle):
    """The batch rule: this rank's rows for each step of one epoch, as index arrays.

    Every rank takes S = step_count(N, batch_size) steps (N = sum(counts)). Rank r first
    permutes its shard with ``numpy.random.default_rng([key, epoch, r])`` (``key`` is drawn
    once per fit call from the network's generator, identical on all ranks) unless
    shuffle is False; its part of step s is the s-th slice given by :func:`part_bounds`.
    The global batch of step s is the union of the ranks' parts, in rank order.
    """
    n = int(counts[rank])
    steps = step_count(int(np.sum(counts)), batch_size)
    order = (np.random.default_rng([key, epoch, rank]).permutation(n) if shuffle
             else np.arange(n))
    bounds = part_bounds(counts, rank, steps)
    return [order[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


# ---- shards that may be memory-mapped ------------------------------------------------------

def check_shard(net, X, y):
    """Validate a training shard (X, y) without copying X; see :func:`check_features`."""
    X = check_features("X", X, net.layer_sizes[0], net.dtype)
    targets = check.check_targets("y", y, net.output, net.layer_sizes[-1], X.shape[0],
                                  net.dtype)
    return X, targets


def check_features(name, X, n_features, dtype):
    """Validate a shard without copying it: shape, real numbers, finite (chunk by chunk).

    Returns X as an ndarray (a memory map stays one); batches are converted to the
    network's dtype one at a time by :func:`gather`.
    """
    arr = check._as_numeric_array(name, X)
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array of shape (n_samples, {n_features}), "
                         f"got an array of shape {arr.shape}")
    if arr.shape[1] != n_features:
        raise ValueError(f"{name}: expected {n_features} features (columns), got {arr.shape[1]}")
    if arr.dtype.kind == "f":
        limit = np.finfo(dtype).max
        rows = max(1, _CHECK_CHUNK_BYTES // max(1, arr.itemsize * arr.shape[1]))
        for start in range(0, arr.shape[0], rows):
            chunk = arr[start:start + rows]
            check._require_finite(name, chunk)
            if chunk.size and max(np.maximum.reduce(chunk, axis=None),
                                  -np.minimum.reduce(chunk, axis=None)) > limit:
                raise ValueError(f"{name}: values beyond the {np.dtype(dtype).name} range "
                                 f"(|x| > {limit:g})")
    return arr


def gather(out, X, rows):
    """out[...] = X[rows] converted to out's dtype, without a copy of X."""
    if X.dtype == out.dtype:
        np.take(X, rows, axis=0, out=out)
    else:
        out[...] = X[rows]   # check_shard made sure the values fit out's dtype
    return out


def batch_plan(sync, net, n_rows, batch_size, shuffle):
    """fit's plan under comm (see Network._batch_plan and epoch_plan)."""
    counts = sync.counts
    n_total = int(counts.sum())
    if n_total < net._min_train_rows:
        raise ValueError(f"X: expected at least {net._min_train_rows} rows over all ranks, "
                         f"got {n_total} (rows per rank: {counts.tolist()})")
    steps = step_count(n_total, batch_size)
    sizes = global_batch_sizes(counts, steps)
    if sizes.min() < net._min_train_rows:
        raise ValueError(
            f"batch_size: with shards of {counts.tolist()} rows, batch_size={batch_size} "
            f"gives a step of {int(sizes.min())} row(s) over all ranks; batch norm needs 2 "
            f"(use a larger batch_size)")
    # identical on all ranks (one generator state); an array, so a checkpoint can restore it
    key = np.array([net._rng.integers(2**63)], np.int64)
    rank = sync.rank

    def plan(epoch):
        return list(zip(epoch_plan(counts, rank, batch_size, int(key[0]), epoch, shuffle),
                        sizes.tolist()))
    return plan, steps, n_total, key
