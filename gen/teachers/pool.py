"""Several endpoints serving one teacher (one vLLM replica per GPU, say), balanced by outstanding requests.

A request goes to the endpoint with the fewest requests outstanding. An endpoint that fails several
times in a row (dropped connections, timeouts, 5xx; not 429, which is back-pressure, not failure) is
ejected; after a cool-down one probe request is let through, and a success re-admits it. The run goes
on with the others meanwhile, and says so.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gen.errors import FatalTeacherError, TeacherError
from gen.teachers.base import Completion, Teacher


@dataclass(slots=True)
class Endpoint:
    name: str
    teacher: Teacher
    outstanding: int = 0
    failures: int = 0  # in a row
    ejected_at: float | None = None
    probing: bool = False
    requests: int = 0
    ejections: int = 0


class EndpointPool:
    """Same interface as one teacher; spreads requests over several."""

    def __init__(
        self,
        teachers: Sequence[tuple[str, Teacher]],
        *,
        eject_after: int = 5,
        probe_after_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        log: Callable[[str], None] = lambda message: None,
    ) -> None:
        if not teachers:
            raise ValueError("an endpoint pool needs at least one endpoint")
        self.endpoints = [Endpoint(name, teacher) for name, teacher in teachers]
        self.eject_after = eject_after
        self.probe_after_s = probe_after_s
        self._clock = clock
        self._log = log

    def _healthy(self) -> list[Endpoint]:
        return [e for e in self.endpoints if e.ejected_at is None]

    def pick(self) -> Endpoint:
        """The healthy endpoint with the fewest outstanding; else an ejected one due for its probe."""
        now = self._clock()
        for e in self.endpoints:
            if e.ejected_at is not None and not e.probing and now - e.ejected_at >= self.probe_after_s:
                e.probing = True  # half-open: exactly one request tests it
                return e
        healthy = self._healthy()
        if healthy:
            return min(healthy, key=lambda e: (e.outstanding, e.failures))
        # Everything is ejected and not yet due: keep going with the one ejected longest ago.
        return min(self.endpoints, key=lambda e: e.ejected_at or 0.0)

    async def complete(
        self, messages: list[dict[str, str]], *, seed: int, sampling: Mapping[str, Any]
    ) -> Completion:
        e = self.pick()
        e.outstanding += 1
        e.requests += 1
        try:
            comp = await e.teacher.complete(messages, seed=seed, sampling=sampling)
        except FatalTeacherError:
            raise
        except TeacherError as err:
            if err.retryable and err.status != 429:
                self._failed(e, err)
            elif e.probing:
                e.probing = False
            raise
        finally:
            e.outstanding -= 1
        self._succeeded(e)
        return comp

    def _failed(self, e: Endpoint, err: TeacherError) -> None:
        e.failures += 1
        if e.probing:
            e.probing = False
            e.ejected_at = self._clock()  # still down: wait another cool-down
        elif e.ejected_at is None and e.failures >= self.eject_after and len(self.endpoints) > 1:
            e.ejected_at = self._clock()
            e.ejections += 1
            left = len(self._healthy())
            self._log(
                f"endpoint {e.name} ejected after {e.failures} failures in a row ({err}); "
                f"carrying on with {left} other{'s' if left != 1 else ''}; "
                f"probing it again in {self.probe_after_s:g} s"
            )

    def _succeeded(self, e: Endpoint) -> None:
        e.failures = 0
        if e.ejected_at is not None:
            e.ejected_at = None
            e.probing = False
            self._log(f"endpoint {e.name} answers again: re-admitted")

    def stats(self) -> list[dict[str, Any]]:
        return [
            {
                "endpoint": e.name,
                "requests": e.requests,
                "ejections": e.ejections,
                "ejected": e.ejected_at is not None,
            }
            for e in self.endpoints
        ]

    async def list_models(self) -> list[str]:
        seen: list[str] = []
        for e in self.endpoints:
            lister = getattr(e.teacher, "list_models", None)
            if lister is not None:
                seen += [m for m in await lister() if m not in seen]
        return seen

    async def close(self) -> None:
        for e in self.endpoints:
            await e.teacher.close()
