"""Work overlapped in threads: a producer running ahead of its consumer (prefetch: the next training batch while a
step runs, the next video frames decoded and resized while the model runs) and a consumer running behind its
producer (behind: overlays painted and encoded while the model runs on the next frames). numpy, PIL, ffmpeg's
pipes, TensorFlow and ONNX Runtime release the GIL in their heavy work, so threads share the cores."""
import contextlib
import itertools
import queue
import threading

_END = object()  # behind's last item: the producer is done


def prefetch(iterable, depth=2):
    """Iterate over iterable in a background thread, up to depth items ahead. An exception of the producer is
    raised in the consumer; the thread stops when the consumer does."""
    items, stop = queue.Queue(maxsize=depth), threading.Event()

    def put(item):
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def produce():
        try:
            for item in iterable:
                if not put((True, item)):
                    return
            put((False, None))
        except BaseException as e:  # handed to the consumer, which raises it (a thread must not swallow it)
            put((False, e))
        finally:  # a generator stopped early closes now, in this thread, with what it holds (a thread pool)
            if hasattr(iterable, 'close'):
                iterable.close()

    threading.Thread(target=produce, daemon=True).start()
    try:
        while True:
            more, item = items.get()
            if not more:
                if item is not None:
                    raise item
                return
            yield item
    finally:
        stop.set()


@contextlib.contextmanager
def behind(consume, depth=2):
    """A context whose value put(item) hands item to consume(item), called in order in a background thread at most
    depth items behind. Leaving the context waits until every item is consumed. An exception of consume is raised
    by the next put, or on leaving; after an exception in the context, the items still waiting are dropped."""
    items, abandon = queue.Queue(maxsize=depth), threading.Event()
    error = None

    def work():
        nonlocal error
        while (item := items.get()) is not _END:
            if error is None and not abandon.is_set():
                try:
                    consume(item)
                except BaseException as e:  # raised in the producer's thread (a thread must not swallow it)
                    error = e

    def put(item):
        if error is not None:
            raise error
        items.put(item)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        yield put
    except BaseException:
        abandon.set()
        raise
    finally:
        items.put(_END)
        thread.join()
    if error is not None:
        raise error


def batched(iterable, size):
    """Lists of size consecutive items of iterable; the last may be shorter (itertools.batched of Python 3.12)."""
    iterator = iter(iterable)
    while group := list(itertools.islice(iterator, size)):
        yield group
