"""Background jobs (start, stop, lockdown retries): asyncio tasks and their progress.

A job's status comes from the ledger (``LifecycleReplay.jobs``); only the human-readable
step of a running job lives here, in memory. After a crash, jobs that were running are
closed by the service's recovery, not here.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable

log = logging.getLogger("duet.jobs")


def new_job_id() -> str:
    return secrets.token_hex(8)


class JobRunner:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()
        self._steps: dict[str, str] = {}

    def progress(self, job_id: str) -> Callable[[str], None]:
        return lambda step: self._steps.__setitem__(job_id, step)

    def step(self, job_id: str) -> str | None:
        """The last step a job reported in this run of the controller."""
        return self._steps.get(job_id)

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
