"""The journal: records come back in order after a crash, a torn tail is ignored, a message is
handed on for acknowledgement only once it is on disk, and a full disk is survived."""

from __future__ import annotations

import os
import random

from streamrnn.daemon import journal
from streamrnn.daemon.journal import Journal


def test_records_come_back_in_order_and_tokens_only_once_on_disk(tmp_path):
    durable: list[int] = []
    seen_on_disk: list[bool] = []

    def on_durable(tokens):
        records = {r.seq for r in journal.replay(tmp_path, after=0)}  # what a crash now would replay
        seen_on_disk.append(all(t in records for t in tokens))
        durable.extend(tokens)

    j = Journal(tmp_path, on_durable)
    for i in range(500):
        seq = j.append(journal.MESSAGE, 1000.0 + i, f"plant/s{i % 3}/frame", b'{"ts": %d}' % i, token=i + 1)
        assert seq == i + 1
    j.close_tick("s1", 77, 2000.0)
    assert j.close(5.0)
    assert durable == list(range(1, 501)) and all(seen_on_disk)
    recs = list(journal.replay(tmp_path, after=200))
    assert [r.seq for r in recs] == list(range(201, 502))
    assert recs[0].topic == "plant/s2/frame" and recs[0].payload == b'{"ts": 200}' and recs[0].arrival == 1200.0
    assert recs[-1].kind == journal.CLOSE and recs[-1].topic == "s1" and recs[-1].tick == 77
    assert j.counts["records"] == 501 and j.counts["syncs"] >= 1


def test_rotation_and_pruning_keep_what_the_oldest_checkpoint_needs(tmp_path):
    j = Journal(tmp_path, lambda tokens: None)
    for cut in (100, 200, 300):
        while j.seq < cut:
            j.append(journal.MESSAGE, 0.0, "t", b"x")
        j.rotate()
        j.prune(0)  # its checkpoint written (the oldest kept covers nothing yet)
    j.append(journal.MESSAGE, 0.0, "t", b"x")
    j.flush(5.0)
    assert [first for first, _ in journal.segments(tmp_path)] == [1, 101, 201, 301]
    j.prune(200)  # the oldest checkpoint kept covers up to 200
    j.close(5.0)
    assert [first for first, _ in journal.segments(tmp_path)] == [201, 301]
    assert [r.seq for r in journal.replay(tmp_path, after=200)] == list(range(201, 302))


def test_a_torn_record_ends_its_segment_and_later_segments_still_count(tmp_path):
    j = Journal(tmp_path, lambda tokens: None)
    for _ in range(50):
        j.append(journal.MESSAGE, 0.0, "t", os.urandom(40))
    j.rotate()
    for _ in range(10):
        j.append(journal.MESSAGE, 0.0, "t", b"y")
    j.close(5.0)
    (_, first), _ = journal.segments(tmp_path)
    data = first.read_bytes()
    rng = random.Random(1)
    for _ in range(10):
        cut = rng.randrange(len(data) - 60, len(data))  # inside the last record or two
        first.write_bytes(data[:cut])
        seqs = [r.seq for r in journal.replay(tmp_path, after=0)]
        assert seqs[: seqs.index(51)] == list(range(1, seqs.index(51) + 1)) and 47 <= seqs.index(51) <= 49
        assert seqs[seqs.index(51) :] == list(range(51, 61))
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x10
    first.write_bytes(bytes(flipped))
    seqs = [r.seq for r in journal.replay(tmp_path, after=0)]
    assert 51 in seqs and len(seqs) < 60  # records from the altered one on are not trusted


def test_a_full_disk_is_counted_and_serving_goes_on(tiny_disk):
    disk = tiny_disk("64k")
    acked: list[int] = []
    j = Journal(disk, acked.extend)
    for i in range(400):
        j.append(journal.MESSAGE, 0.0, "t", b"z" * 500, token=i)
        if i % 20 == 19:
            j.flush(5.0)
    assert j.close(5.0)
    assert acked == list(range(400))  # all handed on: the daemon acknowledges and keeps serving
    assert j.counts["errors"] >= 1 and 0 < j.counts["records"] < 400
    seqs = [r.seq for r in journal.replay(disk, after=0)]
    assert seqs == sorted(seqs) and len(seqs) == j.counts["records"]  # no torn record left behind


def test_after_a_crash_mid_write_the_next_records_are_not_hidden_behind_the_torn_one(tmp_path):
    j = Journal(tmp_path, lambda tokens: None)
    for _ in range(5):
        j.append(journal.MESSAGE, 0.0, "t", b"a")
    j.rotate()
    j.append(journal.MESSAGE, 0.0, "t", b"torn")
    j.close(5.0)
    (_, _), (first, seg) = journal.segments(tmp_path)
    seg.write_bytes(seg.read_bytes()[:-2])  # the crash: record 6 torn, never acknowledged
    last = max(r.seq for r in journal.replay(tmp_path, after=0))
    assert last == 5 and first == 6
    j = Journal(tmp_path, lambda tokens: None, next_seq=last + 1)  # the restart
    j.append(journal.MESSAGE, 0.0, "t", b"after")
    j.close(5.0)
    assert [(r.seq, r.payload) for r in journal.replay(tmp_path, after=5)] == [(6, b"after")]


def test_a_disk_that_keeps_failing_is_logged_at_a_bounded_rate_and_counted_in_full(tiny_disk, caplog):
    disk = tiny_disk("64k")
    j = Journal(disk, lambda tokens: None)
    for i in range(600):
        j.append(journal.MESSAGE, 0.0, "t", b"z" * 500, token=i)
        j.flush(5.0)  # a batch each: a write, and a failure, each
    assert j.close(5.0)
    said = [r for r in caplog.records if r.getMessage().startswith("journal write failed")]
    assert j.counts["errors"] >= 400 and 1 <= len(said) <= 5  # 5 a minute
    assert len(list(disk.iterdir())) == 1  # every failed batch retried the one segment


def test_checkpoints_that_are_never_written_start_no_segment_after_the_first(tmp_path):
    """A full disk fails every checkpoint, each of which rotated the journal: the folder must not
    grow by a segment a checkpoint for as long as the outage lasts."""
    j = Journal(tmp_path, lambda tokens: None)
    for _ in range(50):
        j.append(journal.MESSAGE, 0.0, "t", b"x")
        j.rotate()  # a checkpoint started, never written: no prune follows
    j.rotate()  # and one with nothing since
    j.flush(5.0)
    assert [first for first, _ in journal.segments(tmp_path)] == [1, 2]
    j.prune(1)  # at last one written, covering record 1
    for _ in range(3):
        j.append(journal.MESSAGE, 0.0, "t", b"x")
        j.rotate()
        j.prune(1)
    j.close(5.0)
    assert [first for first, _ in journal.segments(tmp_path)] == [2, 52, 53, 54]
    assert [r.seq for r in journal.replay(tmp_path, after=1)] == list(range(2, 54))
