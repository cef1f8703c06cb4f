"""Checkpoints: the daemon's whole state in one file, written atomically, verified when read.

A file is ``MAGIC | sha256 of the body | body length | body``, where the body is ``torch.save`` of
plain data only (tensors, numbers, strings, lists, dicts) and is read back with
``weights_only=True``: a checkpoint can never run code. A file that fails its length or checksum
(a torn write, a bad sector, a flipped bit) is logged and skipped for the one before it.

Files are named by the journal sequence number they cover (``checkpoint-<seq>.pt``): restoring
one and replaying the journal's records after that number gives back the state at the crash.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from streamrnn.atomic import write_with
from streamrnn.config import ConfigError, Settings

log = logging.getLogger(__name__)

MAGIC = b"SRNNCKP1"
_HEAD = struct.Struct(">8s32sQ")
_NAME = re.compile(r"^checkpoint-(\d{20})\.pt$")


class CorruptCheckpoint(ValueError):
    """A checkpoint file that is truncated, altered or not a checkpoint at all."""


class CheckpointMismatch(ConfigError):
    """A sound checkpoint made for another model or feature set: refused, never half-loaded. A
    configuration error (exit status 2): restarting with the same configuration cannot help."""


def encode(state: dict) -> bytes:
    """Plain data (numpy arrays become tensors) -> the bytes of a checkpoint file."""
    buf = io.BytesIO()
    _write(state, buf)
    return buf.getvalue()


def _write(state: dict, f: BinaryIO) -> None:
    """A checkpoint file into ``f`` (seekable), its body hashed on the way, so nothing the size of
    the body is held (a body made in memory first, then hashed and joined to its header, took
    hundreds of MB more at its peak at many streams: CHANGELOG.md)."""
    start = f.tell()
    f.write(_HEAD.pack(MAGIC, bytes(32), 0))  # filled in once the body is hashed
    body = _Hashing(f)
    try:
        torch.save(_tensors(state), body)
    except RuntimeError:
        if body.failed:  # torch hides a full disk behind its own error ("unexpected pos")
            raise body.failed from None
        raise
    end = f.tell()
    f.seek(start)
    f.write(_HEAD.pack(MAGIC, body.sha.digest(), body.size))
    f.seek(end)


class _Hashing:
    """The file a checkpoint's body goes through: hashed as it is written."""

    def __init__(self, f: BinaryIO) -> None:
        self.f, self.sha, self.size = f, hashlib.sha256(), 0
        self.failed: OSError | None = None

    def write(self, data: bytes | memoryview) -> int:
        self.sha.update(data)
        self.size += memoryview(data).nbytes
        try:
            return self.f.write(data)
        except OSError as e:
            self.failed = e
            raise

    def flush(self) -> None:
        self.f.flush()


def decode(data: bytes) -> dict:
    """The bytes of a checkpoint file -> plain data with numpy arrays; CorruptCheckpoint if unsound."""
    if len(data) < _HEAD.size:
        raise CorruptCheckpoint(f"{len(data)} bytes: shorter than the header")
    magic, digest, length = _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise CorruptCheckpoint("not a streamrnn checkpoint (bad magic)")
    body = data[_HEAD.size :]
    if len(body) != length:
        raise CorruptCheckpoint(f"truncated: body of {len(body)} bytes, header says {length}")
    if hashlib.sha256(body).digest() != digest:
        raise CorruptCheckpoint("checksum mismatch")
    try:
        state = torch.load(io.BytesIO(body), weights_only=True)
    except Exception as e:  # a checksum collision is out of reach; a foreign writer is not
        raise CorruptCheckpoint(f"unreadable body: {e}") from e
    if not isinstance(state, dict):
        raise CorruptCheckpoint("body is not a mapping")
    return _arrays(state)


def layout(settings: Settings) -> dict[str, Any]:
    """What a checkpoint's state must have been made for: the model's shape and features, the
    grid, the ring and the evaluator's sizes. Anything else may change across a restart."""
    from streamrnn.engine.model import ModelSpec

    return {
        "spec": ModelSpec.from_settings(settings).to_dict(),
        "period": settings.features.period,
        "ring_size": settings.ring.size,
        "residuals": settings.evaluator.residuals,
    }


def check_layout(saved: dict[str, Any], wanted: dict[str, Any], path: Path) -> None:
    """Raise CheckpointMismatch naming every difference between ``saved`` and ``wanted``."""
    diffs = []
    for key in wanted:
        a, b = saved.get(key), wanted[key]
        if key == "spec" and isinstance(a, dict):
            diffs += [f"model.{k}: checkpoint {a.get(k)!r}, configuration {b[k]!r}" for k in b if a.get(k) != b[k]]
        elif a != b:
            diffs.append(f"{key}: checkpoint {a!r}, configuration {b!r}")
    if diffs:
        raise CheckpointMismatch(
            f"checkpoint {path} was made for another model or feature set:\n  "
            + "\n  ".join(diffs)
            + "\nRestore the configuration it was made with, or move the checkpoint directory away to start afresh."
        )


class Store:
    """The checkpoint files of one state directory, newest last; the newest ``keep`` are kept."""

    def __init__(self, folder: str | Path, keep: int = 3) -> None:
        self.folder = Path(folder)
        self.keep = keep
        self.skipped = 0  # unsound files met by latest()

    def paths(self) -> list[tuple[int, Path]]:
        """(seq, path) of every checkpoint file, oldest first."""
        if not self.folder.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.folder.iterdir() if (m := _NAME.match(p.name))]
        return sorted(found)

    def write(self, seq: int, state: dict) -> tuple[Path, int]:
        """Write ``state`` as the checkpoint of ``seq`` (atomically); drop the ones past ``keep``.
        Returns the path and its size. OSError (a full disk) leaves the older files as they were."""
        path = self.folder / f"checkpoint-{seq:020d}.pt"
        size = write_with(path, lambda f: _write(state, f))
        for _, old in self.paths()[: -self.keep]:
            old.unlink(missing_ok=True)
        return path, size

    def oldest(self) -> int | None:
        """The sequence number of the oldest checkpoint kept: the journal must reach back to it."""
        p = self.paths()
        return p[0][0] if p else None

    def candidates(self) -> Iterator[tuple[int, Path, dict]]:
        """Sound checkpoints, newest first; each unsound one is logged, counted and skipped."""
        for seq, path in reversed(self.paths()):
            try:
                state = decode(path.read_bytes())
            except (CorruptCheckpoint, OSError) as e:
                self.skipped += 1
                log.error("checkpoint skipped", extra={"path": str(path), "error": str(e)})
                continue
            yield seq, path, state


def _tensors(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    if isinstance(x, dict):
        return {k: _tensors(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_tensors(v) for v in x)
    if isinstance(x, np.generic):
        return x.item()
    return x


def _arrays(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.numpy()
    if isinstance(x, dict):
        return {k: _arrays(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_arrays(v) for v in x)
    return x
