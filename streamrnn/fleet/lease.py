"""A shard's membership of the fleet and its claims on partitions, as keys of a JetStream KV
bucket whose keys live ``shards.lease`` seconds unless renewed.

``member.<name>`` says a shard is alive; ``owner.<p>`` says which process holds partition ``p`` (``owner.trainer``: the fleet's trainer)
(its name and a token of this process's, so that a restart under the same name is told from the
process before it). A claim is made only where no key is (or where a former process of the same
name left one), renewed with the revision it was last written at, and checked before each
checkpoint: a process that stalled past its lease and lost a claim never overwrites the state of
the shard that took the partition.
"""

from __future__ import annotations

import json
import time
import uuid


class Leases:
    def __init__(self, kv, me: str) -> None:
        self.kv, self.me = kv, me
        self.token = f"{me} {uuid.uuid4().hex[:12]}".encode()

    async def members(self) -> set[str]:
        """Renew our membership; the live members, us among them."""
        import nats

        await self.kv.put(f"member.{self.me}", json.dumps({"since": time.time()}).encode())
        try:
            return {k.split(".", 1)[1] for k in await self.kv.keys() if k.startswith("member.")} | {self.me}
        except nats.js.errors.NoKeysError:
            return {self.me}

    async def renew(self, p: int | str, rev: int) -> int | None:
        """Our claim on ``p`` renewed: its new revision; None if it lapsed and another took it."""
        got = await _revision(self.kv.update(f"owner.{p}", self.token, last=rev))
        if got is None:  # lapsed (we were too slow) and, if nobody took it, still ours
            got = await _revision(self.kv.create(f"owner.{p}", self.token))
        return got

    async def claim(self, p: int | str) -> int | None:
        """A claim on ``p``, if nobody holds it or a former process of ours does (killed and
        restarted under the same name: its claim would only lapse later): its revision, else None."""
        import nats

        got = await _revision(self.kv.create(f"owner.{p}", self.token))
        if got is not None:
            return got
        try:
            entry = await self.kv.get(f"owner.{p}")
            if entry.value.split(b" ")[0] != self.me.encode():
                return None  # its owner has not handed it back yet, or died and its claim has not lapsed
            return await self.kv.update(f"owner.{p}", self.token, last=entry.revision)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyWrongLastSequenceError):
            return None  # it moved meanwhile: the next round sees

    async def holds(self, p: int | str) -> bool:
        """Whether our claim on ``p`` stands (checked before each checkpoint)."""
        import nats

        try:
            return (await self.kv.get(f"owner.{p}")).value == self.token
        except nats.js.errors.KeyNotFoundError:
            return False

    async def release(self, p: int | str) -> None:
        """Delete our claim on ``p`` (not one another process made since)."""
        import nats

        try:
            entry = await self.kv.get(f"owner.{p}")
        except nats.js.errors.KeyNotFoundError:
            return
        if entry.value == self.token:
            await self.kv.delete(f"owner.{p}", last=entry.revision)

    async def leave(self) -> None:
        await self.kv.delete(f"member.{self.me}")


async def _revision(write) -> int | None:
    """The revision a conditional KV write made; None where its condition failed (another wrote first)."""
    import nats

    try:
        return await write
    except nats.js.errors.KeyWrongLastSequenceError:
        return None
