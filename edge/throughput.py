"""Throughput layout: N workers, each with its own single-threaded interpreter, results in input order.

One interpreter with T threads parallelises inside each convolution, which leaves cores idle
between layers and while an image is decoded. For a folder, N independent interpreters with one
thread each keep every core on whole images: one worker decodes while another invokes, and
nothing waits on a synchronisation inside the network. `invoke()` (LiteRT) and Pillow's resize
release the GIL; Pillow's JPEG decode holds it (about 0.6 ms for a 360 px JPEG), which the other
workers spend in `invoke()`. Measured here, two worker threads decoding and invoking ran as fast
as two processes doing the same (within 2 %), so threads are enough: no process start-up,
pickling or second copy of the card is paid.

`ClassifierPool.map` hands items to the workers with a bounded look-ahead (4 per worker) and
yields results strictly in input order, so rows, the journal and their offsets stay exactly as
in the one-worker layout.
"""

from __future__ import annotations

import queue
from collections import deque
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def default_workers() -> int:
    """One worker per usable core: edge.runtime.default_threads (sched_getaffinity, so a container's CPU set counts)."""
    from .runtime import default_threads

    return max(1, default_threads())


class ClassifierPool:
    """`workers` classifiers for one model, each used by one thread at a time.

    first: an already loaded Classifier to reuse as worker 0 (its card is reused for the others,
    so the model's SHA-256 is checked once). threads: interpreter threads per worker (default 1).
    Raises what `Classifier` raises (ModelError) if a further interpreter cannot be made.
    """

    def __init__(self, first, workers: int, threads: int | None = None, decode=None):
        from concurrent.futures import ThreadPoolExecutor  # here, not at import: cold start of single images

        from .classifier import Classifier
        from .engines import DEFAULT_ENGINE, engine_of
        from .engines import open_backend

        self.workers = max(1, int(workers))
        self._free: queue.Queue = queue.Queue()
        self._free.put(first)
        for _ in range(self.workers - 1):
            kw = {"threads": threads or 1, "threshold": first.threshold}
            if decode is not None or getattr(first, "decode", None) is not None:
                kw["decode"] = decode if decode is not None else first.decode
            # each worker runs the engine the first one runs (issue 22: OpenVINO for a QDQ .onnx, say)
            fmt = getattr(first.card, "model_format", None)
            engine = engine_of(first.backend) if getattr(first, "backend", None) is not None else None
            if engine is not None and fmt in DEFAULT_ENGINE and engine != DEFAULT_ENGINE[fmt]:
                kw["backend"] = open_backend(first.model_path, first.card.model_format, threads or 1, engine=engine)
            self._free.put(Classifier(first.model_path, first.card, **kw))
        self._executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="leukedge-worker")

    def _run(self, fn: Callable, item):
        clf = self._free.get()
        try:
            return fn(clf, item)
        finally:
            self._free.put(clf)

    def map(self, fn: Callable[[object, T], R], items: Iterable[T], lookahead: int | None = None) -> Iterator[R]:
        """fn(classifier, item) for every item, on the workers; results yielded in input order.

        fn must not raise for an item's sake (use ingest.classify_file); if it does, the
        exception is re-raised here when that item's turn comes.
        """
        window = lookahead or 4 * self.workers
        pending: deque = deque()
        it = iter(items)
        for item in it:
            pending.append(self._executor.submit(self._run, fn, item))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

