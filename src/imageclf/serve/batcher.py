"""The batcher behind `serve`: images of concurrent requests gathered into one forward pass,
run in the one thread that owns the model."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch

from imageclf.core.hardware import torch_threads
from imageclf.model.predict import Predictor

log = logging.getLogger(__name__)


class Batcher:
    """Gathers images of concurrent requests into batches of at most `max_batch`, waiting
    at most `max_wait` seconds after the first for more, and runs each batch in one
    inference thread: the event loop never waits on torch. It waits only while images are
    on their way (`coming`: uploads still being decoded), so a lone request runs at once."""

    def __init__(self, load: Callable[[], Predictor], max_batch: int, max_wait: float,
                 tta: bool = False) -> None:
        self.max_batch, self.max_wait = max_batch, max_wait
        self.tta = tta  # average the flipped/zoomed views: better answers, 4x the compute
        self.forward_calls = 0
        self.images = 0
        self.coming = 0  # images accepted and still decoding: worth waiting for
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        # the one thread that runs the model with every core (hardware.torch_threads); the
        # model is loaded there too, so that no other thread holds a multi-threaded pool
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="imageclf-infer",
                                          initializer=torch_threads)
        try:
            self.predictor = self._thread.submit(load).result()
        except BaseException:
            self._thread.shutdown(wait=False)
            raise

    async def submit(self, x: torch.Tensor) -> tuple[torch.Tensor, float | None]:
        """(probabilities (C,), open-set score or None) for one uint8 image (3, P, P)."""
        if self._task is None or self._task.done():
            self._queue = asyncio.Queue()
            self._task = asyncio.get_running_loop().create_task(self._run())
        fut = asyncio.get_running_loop().create_future()
        await self._queue.put((x, fut))
        return await fut

    async def _take(self) -> list[tuple[torch.Tensor, asyncio.Future]]:
        items = [await self._queue.get()]
        deadline = time.monotonic() + self.max_wait
        while len(items) < self.max_batch:
            with contextlib.suppress(asyncio.QueueEmpty):
                while len(items) < self.max_batch:
                    items.append(self._queue.get_nowait())
            left = deadline - time.monotonic()
            if len(items) >= self.max_batch or left <= 0 or not self.coming:
                break
            await asyncio.sleep(min(left, 0.001))
        return items

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = await self._take()
            try:
                answers = await loop.run_in_executor(self._thread, self._forward,
                                                     [x for x, _ in items])
            except Exception as e:  # noqa: BLE001 - every waiting request hears of it
                log.exception("inference failed")
                for _, fut in items:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            for (_, fut), a in zip(items, answers, strict=True):
                if not fut.done():  # its client may have gone
                    fut.set_result(a)

    def _forward(self, images: list[torch.Tensor]) -> list[tuple[torch.Tensor, float | None]]:
        x = torch.stack(images)  # (B, 3, P, P) uint8, stacked in the model's thread
        self.forward_calls += 1
        self.images += x.shape[0]
        probs, scores = self.predictor.judge(x, self.tta)
        if scores is None:
            return [(p, None) for p in probs]
        return [(p, float(s)) for p, s in zip(probs, scores, strict=True)]

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._thread.shutdown(wait=True)
