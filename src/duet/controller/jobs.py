"""Background jobs (start, stop): run as asyncio tasks, their progress kept in the store.

A job's record is the truth a client polls; the task is only the worker. After a crash the
records of jobs that were running are closed by the service's recovery, not here.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable

from duet.controller.store import Store

log = logging.getLogger("duet.jobs")


def new_job_id() -> str:
    return secrets.token_hex(8)


class JobRunner:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._tasks: set[asyncio.Task[None]] = set()

    def progress(self, job_id: str) -> Callable[[str], None]:
        return lambda step: self.store.update_job(job_id, step=step)

    def spawn(self, job_id: str, work: Callable[[], Awaitable[None]]) -> None:
        async def runner() -> None:
            try:
                await work()
            except Exception:  # the work records its own failure; this only keeps the loop alive
                log.exception("job %s ended with an unexpected error", job_id)

        task = asyncio.create_task(runner(), name=f"job-{job_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def wait_all(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def cancel_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await self.wait_all()
