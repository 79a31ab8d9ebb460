"""BoundedBuffer keeps the last bytes of a stream, whatever the chunks (every backend's log tails go through it)."""

import pytest

from expbuild_isolation.executors.logs import BoundedBuffer


@pytest.mark.parametrize("chunk", [1, 7, 64, 100, 101, 4096])
def test_the_tail_is_kept_whatever_the_chunk_size(chunk):
    stream = bytes(i % 251 for i in range(10_000))
    buffer = BoundedBuffer(100)
    for start in range(0, len(stream), chunk):
        buffer.feed(stream[start:start + chunk])
    assert buffer.data() == stream[-100:] and buffer.truncated and buffer.total == len(stream)


def test_a_short_stream_is_kept_whole_and_not_flagged():
    buffer = BoundedBuffer(100)
    for part in (b"abc", b"", b"def"):
        buffer.feed(part)
    assert (buffer.data(), buffer.truncated, buffer.text()) == (b"abcdef", False, "abcdef")


def test_a_zero_limit_keeps_nothing_and_says_so():
    buffer = BoundedBuffer(0)
    buffer.feed(b"x")
    assert (buffer.data(), buffer.truncated) == (b"", True)
