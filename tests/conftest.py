"""Shared fixtures: the teacher simulator as a real server on a free loopback port."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import settings

from gen.sim import SimConfig, SimThread

# Property tests: no per-example deadline (a loaded 2-core machine is slow, not wrong), and in CI the
# same examples every run, so a result does not depend on the draw; locally they keep exploring.
settings.register_profile("ci", derandomize=True, deadline=None)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture
def sim_server() -> Iterator[Callable[..., SimThread]]:
    """A factory: `sim_server(rate_429=0.1)` starts a SimThread with those SimConfig fields.

    The returned server has `base_url`, `port` and `stats()`; every one started is stopped at teardown.
    """
    started: list[SimThread] = []

    def start(**config: Any) -> SimThread:
        server = SimThread(SimConfig(**config))
        server.start()
        started.append(server)
        return server

    yield start
    for server in reversed(started):
        server.stop()
