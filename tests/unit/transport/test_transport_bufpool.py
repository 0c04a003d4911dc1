from blockyard.transport.bufpool import MIN_SIZE, PER_SIZE, PayloadPool


def test_recycles_big_buffers_of_the_same_size() -> None:
    pool = PayloadPool()
    buf = pool.get(1 << 20)
    assert len(buf) == 1 << 20
    pool.put(buf)
    assert pool.get(1 << 20) is buf
    assert pool.get(1 << 20) is not buf  # handed out once only


def test_ignores_small_and_foreign_buffers() -> None:
    pool = PayloadPool()
    small = bytearray(MIN_SIZE - 1)
    pool.put(small)
    pool.put(b"x" * MIN_SIZE)
    assert pool.get(MIN_SIZE - 1) is not small


def test_keeps_a_bounded_number() -> None:
    pool = PayloadPool()
    bufs = [bytearray(MIN_SIZE) for _ in range(PER_SIZE + 5)]
    for b in bufs:
        pool.put(b)
    got = {id(pool.get(MIN_SIZE)) for _ in range(PER_SIZE + 5)}
    assert len(got & {id(b) for b in bufs}) == PER_SIZE
