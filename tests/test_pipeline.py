"""fcn8s/pipeline.py: prefetch and behind keep the order, overlap the work and pass errors on."""
import threading
import time

import pytest

from fcn8s import pipeline


def test_prefetch_keeps_order_overlaps_work_and_passes_errors_on():
    made = []

    def slow(n, fail_at=None):
        for i in range(n):
            if i == fail_at:
                raise ValueError(f'bad item {i}')
            time.sleep(0.05)
            made.append(i)
            yield i
    assert list(pipeline.prefetch(slow(6))) == list(range(6))
    consumer = pipeline.prefetch(slow(6), depth=2)
    assert next(consumer) == 0
    deadline = time.time() + 10
    while len(made) < 10 and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # time for more than the queue holds, were the producer not blocked
    assert made[6:] == [0, 1, 2, 3]  # made ahead, in the background, while the consumer was busy: at most depth+1
    consumer.close()  # the consumer stops: so does the producer, without making the rest
    time.sleep(0.3)
    assert made[6:] == [0, 1, 2, 3]
    with pytest.raises(ValueError, match='bad item 2'):
        list(pipeline.prefetch(slow(5, fail_at=2)))


def test_behind_consumes_in_order_in_the_background_and_passes_errors_on():
    consumed, let_go = [], threading.Event()

    def slow(item, fail_at=None):
        if item == fail_at:
            raise ValueError(f'bad item {item}')
        time.sleep(0.05)
        consumed.append(item)

    def held(item):  # consumes once let go (a put that waited for the consumer would let it go after 10 s)
        let_go.wait(timeout=10)
        slow(item)
    with pipeline.behind(held, depth=2) as put:
        for i in range(3):  # one for the consumer, depth=2 waiting
            put(i)
        consumed_while_held = list(consumed)
        let_go.set()
        put(3)
    assert consumed == [0, 1, 2, 3]  # all of them, in order, when the context is left
    assert consumed_while_held == []  # put did not wait for the consumer: 3 handed before it consumed one
    consumed.clear()
    handed = []
    with pytest.raises(ValueError, match='bad item 1'):
        with pipeline.behind(lambda item: slow(item, fail_at=1)) as put:
            for i in range(50):
                put(i)
                handed.append(i)
    assert consumed == [0]  # nothing after the failure was consumed
    assert len(handed) < 50  # a put raised the failure: the producer did not go on handing items over
    consumed.clear()
    with pytest.raises(KeyError):  # the producer's own error wins; what was waiting is dropped
        with pipeline.behind(slow, depth=2) as put:
            for i in range(3):
                put(i)
            raise KeyError('stop')
    assert consumed in ([], [0])  # at most the item being consumed at the time
    assert list(pipeline.batched(range(7), 3)) == [[0, 1, 2], [3, 4, 5], [6]] and not list(pipeline.batched([], 3))
