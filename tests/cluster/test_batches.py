"""At-most-once casts to another node leave together, one NATS message per node and scheduler
round, in the order they were sent; a batch that grows past its size leaves at once."""

from __future__ import annotations

import trio
import trio.testing

from terraphim_actors import cast
from terraphim_actors.cluster._batches import BATCH_BYTES, CastBatches
from terraphim_actors.cluster._msgpack import decode_batch, encode_record

LIMIT = 1024 * 1024


def record(number: int, size: int = 0) -> bytes:
    return encode_record(cast(None, [number, "x" * size], recipient="worker"), 0.0)


def numbers(body: bytes) -> list[int]:
    return [envelope.payload[0] for envelope in decode_batch(body, now=0.0)]


class Published(list[tuple[str, bytes]]):
    """What the batches handed to NATS, by subject and body."""

    def __call__(self, subject: str, body: bytes) -> None:
        self.append((subject, body))


async def test_the_casts_of_one_round_leave_as_one_message_per_subject_in_order() -> None:
    published = Published()
    batches = CastBatches(published, LIMIT)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(batches.run)
        await trio.testing.wait_all_tasks_blocked()
        for number in range(5):
            batches.add("casts.b", record(number))
            batches.add("casts.c", record(10 + number))
        assert published == []  # nothing leaves before the round ends
        await trio.testing.wait_all_tasks_blocked()
        assert [(subject, numbers(body)) for subject, body in published] == [
            ("casts.b", [0, 1, 2, 3, 4]),
            ("casts.c", [10, 11, 12, 13, 14]),
        ]
        nursery.cancel_scope.cancel()


async def test_a_batch_past_its_size_leaves_at_once_and_order_holds_across_batches() -> None:
    published = Published()
    batches = CastBatches(published, LIMIT)
    count = 3 * BATCH_BYTES // 1000
    async with trio.open_nursery() as nursery:
        nursery.start_soon(batches.run)
        await trio.testing.wait_all_tasks_blocked()
        for number in range(count):
            batches.add("casts.b", record(number, size=1000))
        assert len(published) >= 2  # full batches left without waiting for the round
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert all(len(body) <= BATCH_BYTES for _, body in published)
    assert [n for _, body in published for n in numbers(body)] == list(range(count))


async def test_a_batch_smaller_than_max_payload_when_the_servers_carry_less() -> None:
    published = Published()
    batches = CastBatches(published, max_payload=4000)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(batches.run)
        await trio.testing.wait_all_tasks_blocked()
        for number in range(20):
            batches.add("casts.b", record(number, size=1000))
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert all(len(body) <= 4000 for _, body in published)
    assert [n for _, body in published for n in numbers(body)] == list(range(20))


async def test_what_waits_when_the_node_stops_still_leaves() -> None:
    published = Published()
    batches = CastBatches(published, LIMIT)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(batches.run)
        await trio.testing.wait_all_tasks_blocked()
        batches.add("casts.b", record(1))
        nursery.cancel_scope.cancel()  # before the flushing task ran
    assert [numbers(body) for _, body in published] == [[1]]


async def test_a_cast_while_the_batches_do_not_run_leaves_alone_at_once() -> None:
    published = Published()
    batches = CastBatches(published, LIMIT)
    batches.add("casts.b", record(7))
    assert [(subject, numbers(body)) for subject, body in published] == [("casts.b", [7])]
