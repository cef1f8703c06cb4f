"""Checkpoints: an engine restored from one goes on exactly as the engine that wrote it; unsound
files are detected and skipped; a checkpoint for another model is refused whole."""

from __future__ import annotations

import errno
import io
import random
import subprocess

import numpy as np
import pytest
import torch
from conftest import sine_frames, small_settings

from streamrnn.daemon import checkpoint
from streamrnn.daemon.checkpoint import CheckpointMismatch, CorruptCheckpoint, Store
from streamrnn.engine.engine import Engine
from streamrnn.engine.frame import Frame
from streamrnn.intake.frames import Assembler
from streamrnn.intake.payload import Reading
from streamrnn.learning import judge


def stepped(engine: Engine, frames) -> list:
    return [fc for s, ts, v in frames for fc in engine.step([Frame(s, ts, v)])]


def assert_same(a, b) -> None:
    assert len(a) == len(b) and a
    for x, y in zip(a, b):
        assert (x.stream, x.ts, x.version) == (y.stream, y.ts, y.version)
        np.testing.assert_array_equal(x.values, y.values)
        np.testing.assert_array_equal(x.lower, y.lower)
        np.testing.assert_array_equal(x.now, y.now)


def test_an_engine_restored_from_a_checkpoint_goes_on_exactly_as_the_one_that_wrote_it():
    settings = small_settings()
    frames = sine_frames(700, streams=3)
    first, rest = frames[:1500], frames[1500:]
    a = Engine(settings)
    stepped(a, first)
    assert judge.in_line(a).outcome == "promoted" and a.version == 1  # a trained model, bands, scores
    stepped(a, first[-3:])  # late frames, counted
    state = checkpoint.decode(checkpoint.encode(a.state()))
    b = Engine(settings)
    b.load_state(state)
    assert b.version == 1 and b.streams == a.streams and b.frames_seen == a.frames_seen and b.counts == a.counts
    assert b.next_seed() == a.next_seed()
    assert_same(stepped(a, rest), stepped(b, rest))
    for k in ("skill", "coverage", "n"):
        np.testing.assert_array_equal(a.evaluator.scores()[k], b.evaluator.scores()[k])


def test_live_rings_written_while_frames_come_restore_exactly_once_the_journal_is_replayed():
    """The daemon's checkpoint holds the rings themselves, written on another thread while frames
    still come. Here every frame after the checkpoint lands in the rings before they are encoded
    (the worst case), over the oldest frames; the restored engine, given those frames again as the
    journal's replay gives them, holds exactly the rings, states and forecasts of the first."""
    settings = small_settings(ring={"size": 40})
    frames = sine_frames(120, streams=2)
    first, during, rest = frames[:160], frames[160:200], frames[200:]
    a = Engine(settings)
    stepped(a, first)
    state = a.state(live_rings=True)
    before = {row: r["values"].copy() for row, r in state["rings"].items()}
    stepped(a, during)  # 20 frames a stream, into slots that held the oldest of the 40
    written = checkpoint.decode(checkpoint.encode(state))
    assert any(
        not np.array_equal(written["rings"][row]["values"], v, equal_nan=True) for row, v in before.items()
    )  # the later frames are in it
    b = Engine(settings)
    b.load_state(written)
    stepped(b, during)  # the journal's replay
    for row, ring in a.rings.items():
        np.testing.assert_array_equal(b.rings[row].values, ring.values)
        np.testing.assert_array_equal(b.rings[row].ts, ring.ts)
        assert b.rings[row].count == ring.count
    torch.testing.assert_close(b.bank.hidden, a.bank.hidden, rtol=0, atol=0)
    assert_same(stepped(a, rest), stepped(b, rest))


def test_the_assembler_restored_keeps_its_readings_in_hand_and_measures_silence_from_the_restart():
    a = Assembler(3, 1.0, 0.5, 1.0, 2.0, 10, 3600.0)
    for f, ts in ((0, 0.0), (1, 0.0), (0, 1.0)):
        a.add(Reading("s", f, ts, 10.0 * f + ts), wall=100.0)
    b = Assembler(3, 1.0, 0.5, 1.0, 2.0, 10, 3600.0)
    b.load_state(checkpoint.decode(checkpoint.encode({"a": a.state()}))["a"], wall=500.0)
    assert [f for n, last in b.due(501.0) for f in b.close(n, last)] == []  # the downtime is not silence
    later = Reading("s", 2, 1.0, 7.0)
    got, want = (
        b.add(later, 501.0) + [f for n, last in b.due(503.0) for f in b.close(n, last)],
        a.add(later, 101.0) + [f for n, last in a.due(103.0) for f in a.close(n, last)],
    )
    assert [f.ts for f in got] == [f.ts for f in want] == [1.0]
    np.testing.assert_array_equal(got[0].values, want[0].values)


def test_a_truncated_or_altered_file_is_detected():
    data = checkpoint.encode({"x": np.arange(1000.0), "name": "s1", "n": 3})
    assert checkpoint.decode(data)["name"] == "s1"
    rng = random.Random(0)
    for _ in range(20):
        with pytest.raises(CorruptCheckpoint):
            checkpoint.decode(data[: rng.randrange(len(data))])
        flipped = bytearray(data)
        flipped[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        with pytest.raises(CorruptCheckpoint):
            checkpoint.decode(bytes(flipped))


class Evil:
    def __reduce__(self):
        return (subprocess.call, (["false"],))


def test_a_file_with_a_good_checksum_still_cannot_carry_code():
    buf = io.BytesIO()
    torch.save({"engine": Evil()}, buf)
    body = buf.getvalue()
    import hashlib

    data = checkpoint._HEAD.pack(checkpoint.MAGIC, hashlib.sha256(body).digest(), len(body)) + body
    with pytest.raises(CorruptCheckpoint, match="unreadable"):
        checkpoint.decode(data)


def test_the_store_keeps_the_newest_and_skips_unsound_ones_for_the_one_before(tmp_path):
    store = Store(tmp_path, keep=3)
    for seq in (10, 20, 30, 40):
        store.write(seq, {"seq": seq, "w": np.full(100, float(seq))})
    assert [s for s, _ in store.paths()] == [20, 30, 40] and store.oldest() == 20
    newest = store.paths()[-1][1]
    newest.write_bytes(newest.read_bytes()[:-7])  # torn
    seq, _, state = next(store.candidates())
    assert seq == 30 and state["w"][0] == 30.0 and store.skipped == 1
    assert not list(tmp_path.glob("*.tmp"))


def test_a_disk_that_fills_halfway_through_a_write_leaves_the_last_checkpoint_as_it_was(tiny_disk):
    """The body streams into the file as it is encoded: a disk that fills partway fails the write
    with the disk's own error (torch's would hide it) and leaves neither a half-written checkpoint
    nor its temporary file."""
    folder = tiny_disk("1m")
    store = Store(folder)
    path, size = store.write(1, {"w": np.arange(10.0)})
    assert size == path.stat().st_size
    before = path.read_bytes()
    with pytest.raises(OSError) as e:
        store.write(2, {"w": np.zeros(1 << 18), "v": np.ones(1 << 18)})  # 4 MB
    assert e.value.errno == errno.ENOSPC
    assert [s for s, _ in store.paths()] == [1] and path.read_bytes() == before
    assert [p.name for p in folder.iterdir()] == [path.name]
    assert checkpoint.decode(before)["w"][9] == 9.0


def test_a_checkpoint_for_another_model_or_feature_set_is_refused_naming_what_differs(tmp_path):
    saved = checkpoint.layout(small_settings())
    checkpoint.check_layout(saved, checkpoint.layout(small_settings()), tmp_path)
    with pytest.raises(CheckpointMismatch, match=r"model.hidden_size: checkpoint 16, configuration 32") as e:
        checkpoint.check_layout(saved, checkpoint.layout(small_settings(model={"hidden_size": 32})), tmp_path)
    assert "move the checkpoint directory away" in str(e.value)
    with pytest.raises(CheckpointMismatch, match=r"model.channels"):
        other = small_settings(features={"inputs": ["a", "b", "d"]})
        checkpoint.check_layout(saved, checkpoint.layout(other), tmp_path)


def test_state_holds_only_plain_data():
    engine = Engine(small_settings())
    stepped(engine, sine_frames(20, streams=2))
    body = io.BytesIO(checkpoint.encode(engine.state())[checkpoint._HEAD.size :])
    state = torch.load(body, weights_only=True)
    assert isinstance(state["bank"]["hidden"], torch.Tensor) and state["bank"]["rows"] == {"s0": 0, "s1": 1}
