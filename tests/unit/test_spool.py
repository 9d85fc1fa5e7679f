"""The gateway's disk spool (inference/gateway/publisher.py): what counts as still to replay."""

from __future__ import annotations

from inference.gateway.spool import Spool


def test_records_in_the_open_segment_are_still_to_replay(tmp_path):
    spool = Spool(tmp_path)
    assert not spool.has_records()
    spool.append("chat.requests", b"s-1", b'{"a": 1}')
    assert spool.has_records()  # buffered
    assert spool.flush() == 1
    assert spool.segments() == [] and spool.has_records()  # only in the open segment: the outage-test bug
    [segment] = spool.rotate()
    assert spool.has_records()  # closed, not yet replayed
    assert Spool.read(segment) == [("chat.requests", "s-1", b'{"a":1}')]
    segment.unlink()  # replayed
    assert not spool.has_records()
