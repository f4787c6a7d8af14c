"""The batch reader over the image cube that keeps a device busy (the rows come from
:func:`pipeline.learn.rows.select_rows`).

The reader (:class:`CubeBatches`) never holds the cube in memory. Each epoch it reads the cube in
contiguous blocks of rows (the fast way to read Zarr: see DESIGN.md), in a new random block order,
through a shuffle buffer of ``shuffle_buffer`` images: each batch takes random slots of the buffer
and the next images of the block stream refill them. Reads run in threads, ahead of the batches;
ready batches wait in a bounded queue. Memory: the buffer, the blocks read ahead and the queued
batches, whatever the cube's size. Augmentation (training only): each image gets one of the 8
flips/rotations of the square. The whole epoch's order is a pure function of (seed, epoch), so
batch i can also be rebuilt on its own (Keras asks for a couple of batches out of order to learn
their shapes), and a resumed run sees the same data as an uninterrupted one.

It is a ``keras.utils.PyDataset``, which Keras 3 accepts on every backend (TensorFlow, JAX): no
``tf.data``-only path and no forked processes (zarr's event loop and JAX are not fork-safe).

Several processes (data-parallel training) each read their own part: the epoch's stream of rows
(blocks in their random order) is cut into P equal pieces and process p reads piece p. All run
the same number of batches of the same size (the collectives need it): the last batches are
padded with blank images of weight 0, so every row counts exactly once per epoch. In a training
batch the real images' weights are scaled by batch size / real images, so a padded step moves the
weights as much as a full one, the same on one device, several, or several processes (Keras
averages a loss over the batch size, per replica under TensorFlow's MirroredStrategy).
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from pipeline.errors import DataError
from pipeline.learn.augment import augment
from pipeline.learn.rows import Rows
from storage.cube import Cube, open_cube


@dataclass(frozen=True)
class EpochPlan:
    """One epoch, decided in advance: which rows each batch holds and how the buffer moves.

    ``blocks``: (first, stop) positions into the split's rows, in reading order. ``fill``: images
    first loaded into buffer slots 0..fill-1. Step i emits the buffer's ``slots[i]`` (positions
    ``order[i]``) then refills the first ``refill[i]`` of those slots from the stream.
    """

    blocks: list[tuple[int, int]]
    fill: int
    slots: list[np.ndarray]
    refill: list[int]
    order: list[np.ndarray]
    transforms: np.ndarray


def plan_epoch(
    cube_row: np.ndarray,
    batch_size: int,
    steps: int,
    block_rows: int,
    shuffle_buffer: int,
    rng: np.random.Generator | None,
    part: tuple[int, int] = (0, 1),
    augment_images: bool = False,
) -> EpochPlan:
    """The plan of one epoch for process ``part[0]`` of ``part[1]``: blocks of ``block_rows``
    aligned cube rows in random order (natural order when ``rng`` is None), through a buffer of
    ``shuffle_buffer`` slots (none without ``rng``), ``steps`` batches of ``batch_size``."""
    blocks = _blocks(cube_row, block_rows)
    if rng is not None:
        blocks = [blocks[i] for i in rng.permutation(len(blocks))]
    blocks = _piece(blocks, *part)
    stream = np.concatenate([np.arange(a, b) for a, b in blocks]) if blocks else np.empty(0, np.int64)
    size = min(len(stream), shuffle_buffer if rng is not None else batch_size)
    pool = np.full(max(size, 1), -1, dtype=np.int64)
    pool[:size] = stream[:size]
    fed = size
    slots, refill, order = [], [], []
    for _ in range(steps):
        filled = np.flatnonzero(pool >= 0)
        take = min(batch_size, len(filled))
        chosen = rng.choice(filled, size=take, replace=False) if rng is not None else filled[:take]
        if rng is None:
            chosen = chosen[np.argsort(pool[chosen], kind="stable")]
        order.append(pool[chosen].copy())
        n_in = min(take, len(stream) - fed)
        pool[chosen] = -1
        pool[chosen[:n_in]] = stream[fed : fed + n_in]
        fed += n_in
        slots.append(chosen)
        refill.append(n_in)
    transforms = (
        rng.integers(0, 8, size=len(cube_row)) if (rng is not None and augment_images) else np.zeros(len(cube_row), int)
    )
    return EpochPlan(blocks, size, slots, refill, order, transforms)


def _blocks(cube_row: np.ndarray, block_rows: int) -> list[tuple[int, int]]:
    """(first, stop) positions of the rows in each aligned block of ``block_rows`` cube rows."""
    if len(cube_row) == 0:
        return []
    block = cube_row // block_rows
    starts = np.flatnonzero(np.r_[True, block[1:] != block[:-1]])
    stops = np.r_[starts[1:], len(cube_row)]
    return list(zip(starts.tolist(), stops.tolist(), strict=True))


def _piece(blocks: list[tuple[int, int]], index: int, count: int) -> list[tuple[int, int]]:
    """Piece ``index`` of ``count`` equal pieces of the row stream that ``blocks`` make, as blocks
    (a block at a cut is shared: each piece reads its own rows of it)."""
    sizes = np.array([b - a for a, b in blocks], dtype=np.int64)
    ends = np.cumsum(sizes)
    total = int(ends[-1]) if len(ends) else 0
    low, high = index * total // count, (index + 1) * total // count
    out = []
    for (a, _), end, size in zip(blocks, ends.tolist(), sizes.tolist(), strict=True):
        start = end - size
        lo, hi = max(start, low), min(end, high)
        if lo < hi:
            out.append((a + lo - start, a + hi - start))
    return out


def steps_per_epoch(n_rows: int, batch_size: int, parts: int = 1) -> int:
    """Batches every process runs per epoch: enough for the largest of ``parts`` equal pieces."""
    per_part = -(-n_rows // parts)
    return max(1, -(-per_part // batch_size))


class CubeBatches(keras.utils.PyDataset):
    """Batches ``(images as the cube stores them, labels float32, weights float32)`` of one split for Keras ``fit``,
    ``evaluate`` and ``predict``. ``shuffle``: new block order and buffer each epoch (training);
    otherwise rows in cube order. ``class_weight``: weight per label (0, 1). ``pad``: every batch
    full (several devices or processes need it), the missing images repeated from the batch at
    weight 0 (never blanks: batch norm would see them); otherwise the last batch is short.

    Call :meth:`close` (or use it as a context manager) when done in the middle of an epoch: the
    thread reading ahead holds the shuffle buffer until the epoch ends or the reader is closed.
    """

    def __init__(
        self,
        cube_path: Path,
        rows: Rows,
        batch_size: int,
        *,
        shuffle: bool = False,
        augment_images: bool = False,
        shuffle_buffer: int = 4096,
        block_rows: int = 64,
        seed: int = 0,
        readers: int = 4,
        prefetch: int = 8,
        class_weight: tuple[float, float] = (1.0, 1.0),
        part: tuple[int, int] = (0, 1),
        steps: int | None = None,
        pad: bool = True,
    ) -> None:
        super().__init__(workers=1, use_multiprocessing=False)
        if batch_size < 1:
            raise DataError(f"batch size must be >= 1 (got {batch_size})")
        self.cube: Cube = open_cube(Path(cube_path), mode="r")
        self.rows, self.batch_size, self.shuffle, self.augment_images = rows, batch_size, shuffle, augment_images
        self.shuffle_buffer, self.block_rows, self.seed = max(shuffle_buffer, batch_size), block_rows, seed
        self.readers, self.prefetch, self.part, self.pad = max(1, readers), max(1, prefetch), part, pad
        self.weights = np.asarray(class_weight, dtype=np.float32)
        self.steps = steps or steps_per_epoch(len(rows), batch_size, part[1])
        self.epoch = 0
        self.rebuilt = 0  # batches built on their own, out of order (slow: scattered reads)
        self._plans: dict[int, EpochPlan] = {}
        self._producer: _Producer | None = None

    @property
    def num_batches(self) -> int:
        return self.steps

    def __len__(self) -> int:
        return self.steps

    def set_epoch(self, epoch: int) -> None:
        """Make the next batches those of ``epoch`` (0-based): a resumed run calls it first."""
        if epoch != self.epoch:
            self.close()
            self.epoch = epoch

    def plan(self, epoch: int | None = None) -> EpochPlan:
        """The plan of ``epoch`` (default: the current one)."""
        epoch = self.epoch if epoch is None else epoch
        if epoch not in self._plans:
            rng = np.random.default_rng([self.seed, epoch]) if self.shuffle else None
            self._plans = {epoch: plan_epoch(self.rows.cube_row, self.batch_size, self.steps, self.block_rows,
                                             self.shuffle_buffer, rng, self.part, self.augment_images)}  # fmt: skip
        return self._plans[epoch]

    def batch_rows(self, index: int) -> np.ndarray:
        """Positions (into the split's rows) of the real images of batch ``index``."""
        return self.plan().order[index]

    def _assembler(self) -> _Assembler:
        return _Assembler(self.plan(), self.rows.label, self.weights, self.batch_size, self.augment_images,
                          self.pad, self.shuffle and self.pad)  # fmt: skip

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if not 0 <= index < self.steps:
            raise IndexError(index)
        producer = self._producer
        if producer is None or not producer.serves(index, self.epoch):
            if index != 0:
                self.rebuilt += 1
                images = self.cube.read_rows(self.rows.cube_row[self.batch_rows(index)])
                return self._assembler()(index, images)
            self.close()
            self._producer = producer = _Producer(self._assembler(), self.cube, self.rows.cube_row, self.epoch,
                                                  self.steps, self.readers, self.prefetch)  # fmt: skip
        return producer.take()

    def on_epoch_end(self) -> None:
        self.close()

    def close(self) -> None:
        """Stop reading ahead and free the buffer (the next batch asked for starts again)."""
        if self._producer is not None:
            self._producer.stop()
            self._producer = None

    def __enter__(self) -> CubeBatches:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


@dataclass(frozen=True)
class _Assembler:
    """Makes batch i of a plan from the images of its rows (what the reader thread needs, without
    the reader itself: a reader dropped mid-epoch is then collected and stops its thread)."""

    plan: EpochPlan
    label: np.ndarray
    weights: np.ndarray
    batch_size: int
    augment_images: bool
    pad: bool
    rescale: bool

    def __call__(self, index: int, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Augmented; padded (when ``pad``) with images of the batch repeated at weight 0; in a
        padded training batch (``rescale``) the real images weigh batch size / n, as if full."""
        positions = self.plan.order[index]
        if self.augment_images:
            images = augment(images, self.plan.transforms[positions])
        n = len(positions)
        size = self.batch_size if self.pad else n
        x = np.zeros((size, *images.shape[1:]), dtype=images.dtype) if n < size else np.asarray(images)
        y = np.zeros(size, dtype=np.float32)
        y[:n] = self.label[positions]
        if n < size:
            x[:n] = images
            if n:
                repeat = np.arange(size - n) % n
                x[n:], y[n:] = x[repeat], y[repeat]
        w = np.zeros(size, dtype=np.float32)
        w[:n] = self.weights[y[:n].astype(np.int64)]
        if self.rescale and 0 < n < size:
            w[:n] *= size / n
        return x, y, w


class _Producer:
    """A thread that replays an epoch plan with pixels: reads blocks ahead (in ``readers`` threads),
    moves them through the buffer, assembles batches into a bounded queue."""

    def __init__(self, assemble: _Assembler, cube: Cube, cube_row: np.ndarray, epoch: int, steps: int, readers: int,
                 prefetch: int) -> None:  # fmt: skip
        self.assemble, self.cube, self.cube_row, self.epoch = assemble, cube, cube_row, epoch
        self.steps, self.readers, self.next_index, self.failed = steps, readers, 0, False
        self.ready: queue.Queue = queue.Queue(maxsize=prefetch)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="cube-batches", daemon=True)
        self.thread.start()

    def serves(self, index: int, epoch: int) -> bool:
        """Whether the batch asked for is the next this thread makes."""
        return not self.failed and index == self.next_index and epoch == self.epoch

    def take(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        item = self.ready.get()
        if isinstance(item, BaseException):
            self.failed = True  # its thread has ended: the next request starts again
            raise item
        self.next_index += 1
        return item

    def stop(self) -> None:
        self.stopping.set()
        while self.thread.is_alive():
            try:
                self.ready.get_nowait()  # unblock a full queue
            except queue.Empty:
                self.thread.join(timeout=0.05)

    def _run(self) -> None:
        try:
            self._produce()
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(exc)

    def _put(self, item: object) -> bool:
        while not self.stopping.is_set():
            try:
                self.ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        plan, cube_row = self.assemble.plan, self.cube_row
        pool = self.cube.layout.blank(max(plan.fill, 1))
        with ThreadPoolExecutor(self.readers, thread_name_prefix="cube-read") as pool_of_readers:
            blocks = iter(plan.blocks)
            ahead: deque = deque()

            def read_ahead() -> None:
                while len(ahead) < 2 * self.readers:
                    block = next(blocks, None)
                    if block is None:
                        return
                    ahead.append(pool_of_readers.submit(_read_block, self.cube, cube_row[block[0] : block[1]]))

            stream = _Stream(ahead, read_ahead)
            if plan.fill:
                pool[: plan.fill] = stream.take(plan.fill)
            for index in range(self.steps):
                if self.stopping.is_set():
                    return
                slots = plan.slots[index]
                images = pool[slots]
                n_in = plan.refill[index]
                if n_in:
                    pool[slots[:n_in]] = stream.take(n_in)
                if not self._put(self.assemble(index, images)):
                    return


def _read_block(cube: Cube, rows: np.ndarray) -> np.ndarray:
    """Images of the (ascending, close together) cube ``rows``: one contiguous read."""
    return cube.read_block(int(rows[0]), int(rows[-1]) + 1)[rows - rows[0]]


class _Stream:
    """The epoch's images in block order, taken n at a time from blocks read ahead."""

    def __init__(self, ahead: deque, read_ahead) -> None:  # noqa: ANN001
        self.ahead, self.read_ahead, self.current, self.offset = ahead, read_ahead, None, 0

    def take(self, n: int) -> np.ndarray:
        parts = []
        while n > 0:
            if self.current is None or self.offset == len(self.current):
                self.read_ahead()
                self.current, self.offset = self.ahead.popleft().result(), 0
                self.read_ahead()
            part = self.current[self.offset : self.offset + n]
            self.offset += len(part)
            n -= len(part)
            parts.append(part)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)
