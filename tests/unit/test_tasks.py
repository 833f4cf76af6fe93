"""Supervision, background nurseries and start-up retries, on the autojump clock."""

from __future__ import annotations

import itertools
from collections import Counter
from functools import partial

import pytest
import trio
import trio.testing

from chatsrv.tasks import StartupError, live_tasks, open_background, retry, supervised


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


async def test_a_failing_task_is_restarted_with_backoff_and_counted(
        autojump_clock: trio.testing.MockClock) -> None:
    runs: list[float] = []
    failures: Counter[str] = Counter()
    third = trio.Event()

    async def flaky(*, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        runs.append(trio.current_time())
        task_status.started("up")
        if len(runs) < 3:
            raise RuntimeError(f"boom {len(runs)}")
        third.set()
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        value = await nursery.start(partial(supervised, "flaky", flaky, failures=failures,
                                            first_delay=1.0))
        await third.wait()
        nursery.cancel_scope.cancel()
    assert value == "up" and failures["flaky"] == 2
    gaps = [b - a for a, b in itertools.pairwise(runs)]
    # jittered ±20 % around 1 s, then around 2 s
    assert 0.8 <= gaps[0] <= 1.2 and 1.6 <= gaps[1] <= 2.4


async def test_a_failure_before_started_is_a_startup_failure(
        autojump_clock: trio.testing.MockClock) -> None:
    async def broken(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        raise StartupError("port taken")

    failures: Counter[str] = Counter()
    async with trio.open_nursery() as nursery:
        with pytest.raises(StartupError, match="port taken"):
            await nursery.start(partial(supervised, "broken", broken, failures=failures,
                                        first_delay=0.1))
    assert failures["broken"] == 0


async def test_a_task_that_returns_is_done(autojump_clock: trio.testing.MockClock) -> None:
    calls = 0

    async def once(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        nonlocal calls
        calls += 1
        task_status.started()

    async with trio.open_nursery() as nursery:
        await nursery.start(partial(supervised, "once", once, failures=Counter(),
                                    first_delay=0.1))
    assert calls == 1


async def test_the_body_of_open_background_raises_its_own_exception() -> None:
    started = trio.Event()

    async def worker() -> None:
        started.set()
        await trio.sleep_forever()

    with pytest.raises(KeyError):  # not an ExceptionGroup
        async with open_background() as nursery:
            nursery.start_soon(worker)
            await started.wait()
            raise KeyError("from the body")


async def test_retry_gives_up_on_transient_errors_after_the_deadline(
        autojump_clock: trio.testing.MockClock) -> None:
    attempts = 0

    async def refused() -> None:
        nonlocal attempts
        attempts += 1
        raise ConnectionRefusedError("refused")

    began = trio.current_time()
    with pytest.raises(StartupError, match="db: refused"):
        await retry(refused, what="db", deadline=10, transient=(OSError,))
    assert attempts > 3 and 10 <= trio.current_time() - began <= 11


async def test_retry_raises_permanent_errors_at_once(
        autojump_clock: trio.testing.MockClock) -> None:
    attempts = 0

    async def unknown_database() -> None:
        nonlocal attempts
        attempts += 1
        raise StartupError("database does not exist")

    with pytest.raises(StartupError, match="does not exist"):
        await retry(unknown_database, what="db", deadline=10, transient=(OSError,))
    assert attempts == 1


async def test_live_tasks_counts_every_task_of_the_run() -> None:
    before = live_tasks()
    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(trio.sleep_forever)
        await trio.testing.wait_all_tasks_blocked()
        assert live_tasks() == before + 3
        nursery.cancel_scope.cancel()
    assert live_tasks() == before
