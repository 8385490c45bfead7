"""DNS for image fetches: the OS resolver on its own small thread pool, with its own timeout.

``loop.getaddrinfo`` runs on the loop's default executor, which the transformers engine and everything else
share, and a lookup there waits as long as the OS resolver likes (its retries can take tens of seconds). A
client naming slow-to-resolve hosts could fill that executor. Here lookups get a few threads of their own and
a deadline: past it the fetch is refused (``image_fetch_failed``) and a lookup still queued is dropped. A
lookup already running cannot be interrupted; it ends in its thread and only this pool waits for it.
"""

from __future__ import annotations

import asyncio
import functools
import socket
from concurrent.futures import ThreadPoolExecutor

from server.errors import ImageError

THREAD_NAME_PREFIX = "msserve-image-dns"


class PooledResolver:
    """A ``Resolver`` (host, port) -> addresses as strings, for ``SafeFetcher``."""

    def __init__(self, workers: int = 4, timeout_s: float = 5.0) -> None:
        if workers < 1 or timeout_s <= 0:
            raise ValueError("a resolver needs at least one worker and a positive timeout")
        self.timeout_s = timeout_s
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=THREAD_NAME_PREFIX)

    async def __call__(self, host: str, port: int) -> list[str]:
        loop = asyncio.get_running_loop()
        lookup = functools.partial(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
        try:
            async with asyncio.timeout(self.timeout_s):
                infos = await loop.run_in_executor(self._executor, lookup)
        except TimeoutError as exc:
            raise ImageError(
                f"looking up image URL host {host!r} took longer than {self.timeout_s:g} s",
                code="image_fetch_failed",
                param="image_url",
            ) from exc
        return [str(info[4][0]) for info in infos]

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
