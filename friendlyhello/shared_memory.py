"""Memory the workers share, for /metrics: one slot per worker, mapped before they fork.

A slot, SharedSlots.SIZE bytes, written by its worker alone and read by any:

    offset 0   sequence  u64, native order: odd while its worker writes, even when whole
    offset 8   length    u64: the payload's size in bytes (0: nothing written yet)
    offset 16  payload   marshal.dumps() of the worker's metrics snapshot

A reader takes the sequence, the payload, then the sequence again: the same even number twice
means the payload was whole.
"""

import marshal
import mmap
import struct


class SharedSlots:
    """Memory the workers share, mapped before they fork: a slot each, where its owner writes a
    snapshot whole under a sequence number (odd while it writes), so a reader never takes a
    torn one. One writer per slot; any worker reads them all."""

    SIZE = 256 * 1024  # a snapshot is a few kilobytes: labels are bounded

    def __init__(self, count):
        self.count = count
        self._memory = mmap.mmap(-1, self.SIZE * count)

    def write(self, slot, data):
        payload = marshal.dumps(data)
        base = slot * self.SIZE
        if len(payload) > self.SIZE - 16:
            return
        sequence = struct.unpack_from("Q", self._memory, base)[0]
        struct.pack_into("Q", self._memory, base, sequence + 1)
        struct.pack_into("Q", self._memory, base + 8, len(payload))
        self._memory[base + 16:base + 16 + len(payload)] = payload
        struct.pack_into("Q", self._memory, base, sequence + 2)

    def read(self, slot):
        base = slot * self.SIZE
        for _ in range(1000):
            sequence, length = struct.unpack_from("QQ", self._memory, base)
            payload = self._memory[base + 16:base + 16 + length]
            if sequence % 2 == 0 and struct.unpack_from("Q", self._memory, base)[0] == sequence:
                return marshal.loads(payload) if length else None
        return None
