from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.media.loopback import LoopbackServer


@pytest.fixture(scope="module")
def http4() -> Iterator[LoopbackServer]:
    with LoopbackServer("127.0.0.1") as server:
        yield server


@pytest.fixture(scope="module")
def http6() -> Iterator[LoopbackServer]:
    with LoopbackServer("::1") as server:
        yield server
