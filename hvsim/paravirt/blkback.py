"""The block device's backend, in the hypervisor (Python, not jitted).

Xen's split drivers (Barham et al., SOSP 2003, section 3.2; Xen's ``io/blkif.h``): the
guest's *frontend* puts requests on a ring in a page it shares, and signals an event
channel; the *backend*, in a driver domain (here: the hypervisor itself), takes them
off, moves the data between the disk and the guest's buffers, puts responses on the
same ring, and signals back. Neither side traps per byte, or per request: a
notification is sent only when the other side said it was going to sleep (the ring's
event indices, :mod:`hvsim.paravirt.ring`), so a burst of requests costs one.

When it runs: when the guest gives up the processor (``SCHEDOP_block`` or ``yield``)
and at each timer interrupt -- the moments a driver domain would get the CPU on a
one-processor machine. A notification (``EVTCHNOP_send`` on the ring's port) only
marks it as having work; its requests wait in the ring till then.

What it checks, as a backend must of a guest: the operation (BLKIF_OP_READ / WRITE, one
segment), the sector (inside the disk), the buffer (512 bytes of the guest's RAM, and
for a read -- the device writes the guest's memory -- not in a frame typed as a page
table: Xen's blkback maps the buffer through a grant with a writable reference, which
the frame types refuse for a page table). A bad request gets BLKIF_RSP_ERROR (or
EOPNOTSUPP); a ring whose indices are impossible stops the guest (:class:`RingError`).
"""
from __future__ import annotations

from hvsim.monitors.base import Kill
from hvsim.paravirt.frames import L1, L2
from hvsim.paravirt.ring import (BackRing, BlkRequest, BlkResponse, RingError, SharedRing)

__all__ = ["BlockBackend", "SECTOR", "BLKIF_OP_READ", "BLKIF_OP_WRITE"]

SECTOR = 512
BLKIF_OP_READ, BLKIF_OP_WRITE = 0, 1                        # io/blkif.h
BLKIF_RSP_OKAY, BLKIF_RSP_ERROR, BLKIF_RSP_EOPNOTSUPP = 0, -1, -2


class BlockBackend:
    """The backend of one block device: ``hv.disk`` behind the ring at ``ring``."""

    def __init__(self, hv, ring: int, port: int):
        self.hv = hv
        self.port = port
        self.shared = SharedRing(hv.machine._raw_mem, ring)
        self.shared.init()
        self.back = BackRing(self.shared)
        self.kicked = False
        self.notifications = 0         # EVTCHNOP_send from the front
        self.runs = 0                  # times it served the ring
        self.reads = self.writes = self.errors = 0
        self.bytes_moved = 0

    def kick(self) -> None:
        self.notifications += 1
        self.kicked = True

    def service(self) -> None:
        """Serve every request on the ring, respond, notify the front if it asked, and
        sleep only once the final check finds nothing (RING_FINAL_CHECK_FOR_REQUESTS)."""
        if not self.kicked:
            return
        self.runs += 1
        back = self.back
        try:
            while True:
                while back.unconsumed_requests():
                    req = BlkRequest.unpack(back.get_request())
                    back.put_response(BlkResponse(req.id, req.operation, self._do(req)).pack())
                if back.push_responses_and_check_notify():
                    self.hv.send_event(self.port)
                if not back.final_check_for_requests():
                    break
        except RingError as e:
            raise Kill(f"the block ring at {self.shared.base:#x}: {e}") from None
        self.kicked = False

    def _do(self, req: BlkRequest) -> int:
        hv = self.hv
        if req.operation not in (BLKIF_OP_READ, BLKIF_OP_WRITE) or req.nr_segments != 1:
            self.errors += 1
            return BLKIF_RSP_EOPNOTSUPP
        at = req.sector * SECTOR
        buf = req.buffer
        if at + SECTOR > len(hv.disk) or buf + SECTOR > hv.ram:
            self.errors += 1
            return BLKIF_RSP_ERROR
        if req.operation == BLKIF_OP_READ:
            fr = hv.frames
            for f in {buf >> 12, (buf + SECTOR - 1) >> 12}:
                if fr.count[f] and fr.type[f] in (L1, L2):
                    self.errors += 1
                    return BLKIF_RSP_ERROR
            hv.machine.write_physical(buf, bytes(hv.disk[at:at + SECTOR]))
            self.reads += 1
        else:
            hv.disk[at:at + SECTOR] = hv.machine._raw_mem[buf:buf + SECTOR].tobytes()
            self.writes += 1
        self.bytes_moved += SECTOR
        return BLKIF_RSP_OKAY

    @property
    def requests(self) -> int:
        """Requests served (taken off the ring and answered, good or bad)."""
        return self.back.counters["requests_consumed"]

    def counters(self) -> dict:
        d = {f"blk {k}": v for k, v in self.back.counters.items()}
        d.update({"blk notifications": self.notifications, "blk runs": self.runs,
                  "blk reads": self.reads, "blk writes": self.writes, "blk errors": self.errors,
                  "blk bytes": self.bytes_moved})
        return d

    def snapshot(self):
        b = self.back
        return (b.req_cons, b.rsp_prod_pvt, dict(b.counters), self.kicked, self.notifications,
                self.runs, self.reads, self.writes, self.errors, self.bytes_moved)

    def restore(self, snap) -> None:
        b = self.back
        (b.req_cons, b.rsp_prod_pvt, counters, self.kicked, self.notifications, self.runs,
         self.reads, self.writes, self.errors, self.bytes_moved) = snap
        b.counters = dict(counters)
