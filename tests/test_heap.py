"""gatewayd.heap: the collector's settings for `gatewayd run`."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest

from gatewayd import heap
from gatewayd.app import Daemon
from tests.conftest import mailless_config


class Node:
    """A container that can sit in a reference cycle and be watched by a weak reference."""

    def __init__(self) -> None:
        self.other: Node | None = None


def cycle() -> tuple[Node, weakref.ref[Node]]:
    a, b = Node(), Node()
    a.other, b.other = b, a
    return a, weakref.ref(b)


@pytest.fixture(autouse=True)
def restore_collector() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_settle_freezes_what_is_alive_and_makes_young_collections_rarer() -> None:
    _, middle, old = gc.get_threshold()
    alive, _ = cycle()
    heap.settle()
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == (heap.YOUNG_THRESHOLD, middle, old)
    assert not any(alive is obj for obj in gc.get_objects())  # frozen: no generation holds it


def test_cycles_made_after_settling_are_still_collected() -> None:
    heap.settle()
    a, watched = cycle()
    del a
    gc.collect()
    assert watched() is None


def test_settling_again_frees_the_cycles_of_what_a_reload_replaced() -> None:
    a, watched = cycle()
    heap.settle()  # the cycle is frozen: a collection does not look at it
    del a
    gc.collect()
    assert watched() is not None
    heap.settle()  # as after a reload
    assert watched() is None


@pytest.mark.parametrize("settle_heap", [True, False])
async def test_the_daemon_settles_its_heap_before_ready_only_when_the_process_is_its_own(
    tmp_path: Path, settle_heap: bool
) -> None:
    """`gatewayd run` (serve) passes settle_heap=True; an embedding process keeps its collector."""
    gc.unfreeze()
    before = gc.get_threshold()
    daemon = Daemon(mailless_config(tmp_path), settle_heap=settle_heap)
    await daemon.start()
    try:
        assert (gc.get_freeze_count() > 0) is settle_heap
        assert (gc.get_threshold()[0] == heap.YOUNG_THRESHOLD) is (
            settle_heap or before[0] == heap.YOUNG_THRESHOLD
        )
    finally:
        await daemon.stop()
