"""Xen's shared I/O ring (``xen/include/public/io/ring.h``), modelled over guest memory.

Plain Python (not jitted). A split driver moves requests from a guest's *front end*
to a *back end* (here the hypervisor) and responses back, through one 4 KiB page that
both can see (Barham et al., SOSP 2003, Figure 2). This module is that page, laid out
exactly as ring.h's ``DEFINE_RING_TYPES`` lays it out, and the two private halves of
the protocol: :class:`BackRing` (the hypervisor's side: takes requests, puts
responses) and :class:`FrontRing` (the guest's side, written here as the executable
reference for the guest kernel's assembly, and used by the tests). Every method names
the ring.h macro it is.

The ring page (``base``, 4 KiB aligned; little-endian u32s; offsets in bytes)::

     0          4           8          12          16       20                   64
    +----------+-----------+----------+-----------+--------+--------- ... -------+
    | req_prod | req_event | rsp_prod | rsp_event |  pvt   |   __pad (44 bytes)  |
    +----------+-----------+----------+-----------+--------+--------- ... -------+
     written by  written by  written by  written by   zeroed by SHARED_RING_INIT,
     the front   the back    the back    the front    not used otherwise

    64         64+s        64+2s                    64+(n-1)s   64+ns        4096
    +----------+-----------+---------- ... ---------+-----------+--- ... ---+
    |  slot 0  |  slot 1   |                        | slot n-1  |  unused   |
    +----------+-----------+---------- ... ---------+-----------+--- ... ---+
     s = slot size (default 64 bytes); n = ring size = (4096 - 64) // s rounded
     DOWN to a power of two ("as many entries as will fit, rounded down to the
     nearest power of two (so we can mask with (size-1) to loop around)", ring.h).
     64-byte slots: 4032 // 64 = 63 -> 32 slots, the 32 entries of Xen's own blkif
     ring (its 112-byte request on x86-64: 4032 // 112 = 36 -> 32).

The four indices are **free-running** u32 counters: request number ``i`` lives in
slot ``i & (n - 1)``, and every difference between indices is taken modulo 2**32, so
the ring keeps working when the counters wrap. Requests and responses **share the
slots**: the back end writes the response to request ``i`` into slot ``i & (n - 1)``,
over the request it has already copied out. Each side also keeps private indices
(ring.h's ``front_ring`` and ``back_ring``): the front its ``req_prod_pvt`` (requests
written, not yet published) and ``rsp_cons``; the back its ``req_cons`` and
``rsp_prod_pvt``.

**The notification rule** (event-index hold-off, ring.h "Notification hold-off"). A
consumer about to sleep writes into the shared page the index of the first entry it
has *not* seen, plus one: ``req_event = req_cons + 1``, i.e. "wake me when request
number ``req_cons`` is published". A producer publishes a batch by moving
``req_prod`` from ``old`` to ``new`` and then sends an event-channel notification
(EVTCHNOP_send) **only if the consumer asked to be woken in the range just
produced**, i.e. if ``req_event`` lies in ``(old, new]``. ring.h writes that test
without branches, modulo 2**32: ``(new - req_event) < (new - old)``. A consumer that
is awake does not move ``req_event``, so a producer that keeps pushing while the
consumer works sends nothing: one notification per sleep, however many pushes. The
consumer's "final check" closes the race: after writing ``req_event`` it looks at
``req_prod`` once more, because a push that landed just before the write saw the old
``req_event`` and sent nothing. The same pair, ``rsp_event`` and
``RING_FINAL_CHECK_FOR_RESPONSES``, runs the other direction.

Memory ordering: ring.h puts ``xen_wmb()`` between writing the slots and publishing
the index, and ``xen_mb()`` between publishing the index and reading the event
field. This model runs one end at a time (the hypervisor runs while the guest is
stopped in a trap), so the barriers are no-ops here; the *order of the steps* is
kept exactly, and the guest's assembly must keep it too. The race still exists in
hvsim: the guest can be stopped between any two of its instructions, in the middle
of its own final check, and the hypervisor may push responses then. On real x86 the full
barrier is needed, because a load may pass an earlier store to a different location
(Intel SDM Vol. 3A, "Loads May Be Reordered with Earlier Stores to Different
Locations"); a LOCKed instruction or MFENCE provides it.

**A hostile guest.** Everything in the page belongs to the guest, which may write any
value at any time. :class:`BackRing` therefore copies a request out of its slot before
use (ring.h's ``RING_COPY_REQUEST``), masks every index it uses, and refuses a
``req_prod`` that cannot be right (more than ``size`` requests outstanding --
ring.h's ``RING_REQUEST_PROD_OVERFLOW`` -- or behind ``req_cons``) with
:class:`RingError`, naming the indices, before it reads any slot. Whatever the guest
writes into ``req_event``, ``rsp_prod`` or ``rsp_event`` only changes when one end
is notified: the guest can delay its own I/O, nothing more.
Misusing an end from the local side (taking an entry that is not there, putting one
with no room) is a bug in the caller and raises ``RuntimeError`` instead.

**The block format.** :class:`BlkRequest` and :class:`BlkResponse` are hvsim's own
block request and response, *shaped like* Xen's ``blkif.h`` (same operation and
status codes, same id/operation echo) but smaller: Xen's request names its buffers by
grant reference and carries up to 11 segments and a 64-bit id; hvsim's names one
512-byte buffer by guest-physical address. Layouts are drawn above the classes.

Writes go through ``mem[...] = ...``, so a machine's memory (``Machine.memory``, a
numpy ``uint8`` array that drops decoded code on writes) sees them.

>>> import numpy as np
>>> mem = np.zeros(0x4000, np.uint8)          # a stand-in for guest-physical memory
>>> sring = SharedRing(mem, 0x1000)
>>> sring.init()                              # SHARED_RING_INIT, done by the front
>>> sring.size, sring.req_event
(32, 1)
>>> front, back = FrontRing(sring), BackRing(sring)
>>> front.put_request(BlkRequest(id=7, operation=BLKIF_OP_READ, sector=3, buffer=0x3000).pack())
>>> front.push_requests_and_check_notify()    # req_event 1 lies in (0, 1]: wake the back
True
>>> front.put_request(BlkRequest(id=8, operation=BLKIF_OP_READ, sector=4, buffer=0x3200).pack())
>>> front.push_requests_and_check_notify()    # the back is awake already: no notification
False
>>> back.unconsumed_requests()
2
>>> req = BlkRequest.unpack(back.get_request())
>>> req.id, req.sector, hex(req.buffer)
(7, 3, '0x3000')
>>> back.put_response(BlkResponse(id=req.id, operation=req.operation, status=BLKIF_RSP_OKAY).pack())
>>> back.push_responses_and_check_notify()    # rsp_event 1 lies in (0, 1]: wake the front
True
>>> BlkResponse.unpack(front.get_response())
BlkResponse(id=7, operation=0, status=0)
>>> front.counters
{'requests_produced': 2, 'responses_consumed': 1, 'notify_sent': 1, 'notify_suppressed': 1}
"""
from __future__ import annotations

import dataclasses
import struct

import numpy as np

MASK32 = 0xFFFF_FFFF

# The page a ring lives in: "The PAGE_SIZE for ring protocols and hypercall interfaces
# is always 4K, regardless of the architecture" (ring.h, XEN_PAGE_SHIFT 12).
PAGE_SIZE = 4096

# --- the shared ring header: struct __name##_sring (ring.h DEFINE_RING_TYPES) ---------
REQ_PROD = 0        # RING_IDX req_prod: requests published by the front
REQ_EVENT = 4       # RING_IDX req_event: the back asks to be woken by this request
RSP_PROD = 8        # RING_IDX rsp_prod: responses published by the back
RSP_EVENT = 12      # RING_IDX rsp_event: the front asks to be woken by this response
PVT = 16            # union pvt { ...; uint8_t pvt_pad[4]; }
PVT_SIZE = 4
PAD = 20            # uint8_t __pad[44]
PAD_SIZE = 44
RING = 64           # union __name##_sring_entry ring[]: offsetof(struct sring, ring)

DEFAULT_SLOT_SIZE = 64

# --- hvsim's block protocol: codes as in xen/include/public/io/blkif.h ---------------
BLKIF_OP_READ = 0           # "REQUEST CODES"
BLKIF_OP_WRITE = 1
BLKIF_RSP_OKAY = 0          # "STATUS RETURN CODES": operation completed successfully
BLKIF_RSP_ERROR = -1        # failed for some unspecified reason (-EIO)
BLKIF_RSP_EOPNOTSUPP = -2   # operation not supported
SECTOR_SIZE = 512           # "sector_number ... always expressed in 512-byte units" (blkif.h)


def ring_size(slot_size: int) -> int:
    """The number of slots of ``slot_size`` bytes in a 4 KiB ring page: as many as fit
    after the 64-byte header, rounded down to a power of two (ring.h
    ``__CONST_RING_SIZE`` with ``__RD32``).

    >>> ring_size(64), ring_size(16), ring_size(112)
    (32, 128, 32)
    """
    fit = (PAGE_SIZE - RING) // slot_size
    return 1 << (fit.bit_length() - 1)


class RingError(Exception):
    """The other end broke the ring protocol: a shared index holds a value no correct
    peer could have written. ``field`` is the shared field ('req_prod' or
    'rsp_prod'), ``value`` what it held, ``indices`` the private indices it was
    checked against. Nothing was read from the slots and no private index moved; the
    caller decides what to do with the peer (Linux's blkback stops the ring)."""

    def __init__(self, message: str, field: str, value: int, indices: dict):
        super().__init__(message)
        self.field, self.value, self.indices = field, value, indices


class SharedRing:
    """The shared ring page: ring.h's ``struct __name##_sring`` at ``base`` in ``mem``.

    mem : a 1-D numpy ``uint8`` array; its index is the guest-physical address when
        it is a machine's memory.
    base : the ring page's address in ``mem``, 4 KiB aligned, the whole page inside
        ``mem``.
    slot_size : bytes per slot (ring.h: the size of the request/response union), a
        multiple of 4 (so every slot's u32 fields are aligned, as C's union padding
        would make them) from 4 to 4032.

    The four header fields are properties holding u32s. Creating a ``SharedRing``
    does not touch memory; :meth:`init` does (``SHARED_RING_INIT``).
    """

    def __init__(self, mem: np.ndarray, base: int, slot_size: int = DEFAULT_SLOT_SIZE):
        if not isinstance(mem, np.ndarray):
            raise ValueError(f"mem must be a 1-D numpy uint8 array, not {type(mem).__name__}")
        if mem.dtype != np.uint8 or mem.ndim != 1:
            raise ValueError(f"mem must be a 1-D numpy uint8 array, not {mem.dtype} "
                             f"of shape {mem.shape}")
        base = int(base)
        if base % PAGE_SIZE:
            raise ValueError(f"ring page base {base:#x} is not 4 KiB aligned (a ring is one "
                             f"page; the page holding it starts at {base & ~(PAGE_SIZE - 1):#x})")
        if base < 0 or base + PAGE_SIZE > len(mem):
            raise ValueError(f"ring page {base:#x}..{base + PAGE_SIZE - 1:#x} is outside "
                             f"memory 0x0..{len(mem) - 1:#x} ({len(mem):#x} bytes)")
        slot_size = int(slot_size)
        if slot_size % 4 or not 4 <= slot_size <= PAGE_SIZE - RING:
            raise ValueError(f"slot_size {slot_size} must be a multiple of 4 from 4 to "
                             f"{PAGE_SIZE - RING} (the page after the 64-byte header)")
        self.mem = mem
        self.base = base
        self.slot_size = slot_size
        self.size = ring_size(slot_size)

    # -- u32 fields of the header -------------------------------------------------------
    def _get32(self, offset: int) -> int:
        a = self.base + offset
        return int.from_bytes(self.mem[a:a + 4].tobytes(), "little")

    def _set32(self, offset: int, name: str, value: int) -> None:
        value = int(value)
        if not 0 <= value <= MASK32:
            raise ValueError(f"{name} must be a u32, not {value:#x}")
        a = self.base + offset
        self.mem[a:a + 4] = np.frombuffer(value.to_bytes(4, "little"), np.uint8)

    @property
    def req_prod(self) -> int:
        """Requests published by the front (shared; the front writes it)."""
        return self._get32(REQ_PROD)

    @req_prod.setter
    def req_prod(self, value: int) -> None:
        self._set32(REQ_PROD, "req_prod", value)

    @property
    def req_event(self) -> int:
        """Notify the back when request number ``req_event - 1`` is published."""
        return self._get32(REQ_EVENT)

    @req_event.setter
    def req_event(self, value: int) -> None:
        self._set32(REQ_EVENT, "req_event", value)

    @property
    def rsp_prod(self) -> int:
        """Responses published by the back (shared; the back writes it)."""
        return self._get32(RSP_PROD)

    @rsp_prod.setter
    def rsp_prod(self, value: int) -> None:
        self._set32(RSP_PROD, "rsp_prod", value)

    @property
    def rsp_event(self) -> int:
        """Notify the front when response number ``rsp_event - 1`` is published."""
        return self._get32(RSP_EVENT)

    @rsp_event.setter
    def rsp_event(self, value: int) -> None:
        self._set32(RSP_EVENT, "rsp_event", value)

    # -- slots --------------------------------------------------------------------------
    def slot(self, i: int) -> int:
        """The address in ``mem`` of the slot holding entry ``i`` (a free-running index,
        masked with ``size - 1``): ring.h's ``RING_GET_REQUEST`` / ``RING_GET_RESPONSE``."""
        return self.base + RING + (int(i) & (self.size - 1)) * self.slot_size

    def _read_slot(self, i: int) -> bytes:
        a = self.slot(i)
        return self.mem[a:a + self.slot_size].tobytes()        # a copy: RING_COPY_*

    def _write_slot(self, i: int, data: bytes) -> None:
        data = bytes(data)
        if len(data) > self.slot_size:
            raise ValueError(f"{len(data)} bytes do not fit in a {self.slot_size}-byte slot")
        a = self.slot(i)
        self.mem[a:a + self.slot_size] = np.frombuffer(data.ljust(self.slot_size, b"\0"), np.uint8)

    def init(self, start: int = 0) -> None:
        """``SHARED_RING_INIT``: ``req_prod = rsp_prod = 0``, ``req_event = rsp_event =
        1``, ``pvt`` and ``__pad`` zeroed; slots untouched. The front end does this,
        once, before it offers the page to the back.

        ``start`` (hvsim's addition, for tests of index wrap-around) sets up the ring
        as it would be after ``start`` requests, all answered: both producer indices
        ``start``, both event indices ``start + 1``. Attach the ends with the same
        ``start``.
        """
        start = int(start) & MASK32
        self.req_prod = self.rsp_prod = start
        self.req_event = self.rsp_event = (start + 1) & MASK32
        a = self.base + PVT
        self.mem[a:a + PVT_SIZE + PAD_SIZE] = 0


def _notify(new: int, old: int, event: int) -> bool:
    """ring.h's notification test: ``(RING_IDX)(new - event) < (RING_IDX)(new - old)``,
    true iff ``event`` lies in ``(old, new]`` modulo 2**32."""
    return ((new - event) & MASK32) < ((new - old) & MASK32)


class BackRing:
    """The back end's half of the ring (ring.h ``struct __name##_back_ring``): takes
    requests off, puts responses on. This is the hypervisor's side, and it survives
    any guest: see "A hostile guest" in the module docstring.

    ``BACK_RING_ATTACH(r, s, start, PAGE_SIZE)``: ``req_cons = rsp_prod_pvt =
    start`` (``BACK_RING_INIT`` is ``start = 0``).

    ``counters``: ``requests_consumed``, ``responses_produced``, ``notify_sent``
    (pushes after which the front must be notified) and ``notify_suppressed`` (pushes
    that published responses but needed no notification).
    """

    def __init__(self, shared: SharedRing, start: int = 0):
        self.shared = shared
        self.size = shared.size
        self.req_cons = int(start) & MASK32         # next request to take
        self.rsp_prod_pvt = int(start) & MASK32     # next response to write
        self.counters = {"requests_consumed": 0, "responses_produced": 0,
                         "notify_sent": 0, "notify_suppressed": 0}

    def _req_prod(self) -> int:
        """Read the guest's ``req_prod`` and refuse it unless it lies in ``[req_cons,
        rsp_prod_pvt + size]`` (modulo 2**32): beyond, the front claims more than
        ``size`` requests outstanding, ring.h's ``RING_REQUEST_PROD_OVERFLOW``; below,
        it has moved backwards, which ring.h's ``min()`` would silently turn into
        re-reading old slots."""
        prod = self.shared.req_prod
        outstanding = (prod - self.rsp_prod_pvt) & MASK32     # published, not answered
        answered_or_taken = (self.req_cons - self.rsp_prod_pvt) & MASK32
        if outstanding > self.size or outstanding < answered_or_taken:
            ahead = (prod - self.req_cons) & MASK32
            why = (f"{(1 << 32) - ahead} behind req_cons (it moved backwards)" if ahead >= 1 << 31
                   else f"{outstanding} requests outstanding, more than the ring's {self.size}")
            raise RingError(
                f"front end wrote an impossible req_prod {prod:#x}: {why}; it must lie in "
                f"[req_cons {self.req_cons:#x}, rsp_prod_pvt {self.rsp_prod_pvt:#x} + size "
                f"{self.size}] modulo 2**32",
                "req_prod", prod, {"req_cons": self.req_cons, "rsp_prod_pvt": self.rsp_prod_pvt,
                                   "size": self.size})
        return prod

    def unconsumed_requests(self) -> int:
        """``RING_HAS_UNCONSUMED_REQUESTS``: ``min(req_prod - req_cons, size - (req_cons
        - rsp_prod_pvt))`` -- requests published and not yet taken, but never more than
        the slots not holding a response still to be written. Raises
        :class:`RingError` if ``req_prod`` is impossible."""
        req = (self._req_prod() - self.req_cons) & MASK32
        rsp = (self.size - ((self.req_cons - self.rsp_prod_pvt) & MASK32)) & MASK32
        return min(req, rsp)        # always req once _req_prod() has passed; kept as ring.h has it

    def get_request(self) -> bytes:
        """``RING_COPY_REQUEST(r, req_cons++, &req)``: a copy of the next request's slot
        (``slot_size`` bytes; the guest may rewrite the slot afterwards, the copy stays).
        RuntimeError if none is waiting; :class:`RingError` if ``req_prod`` is
        impossible."""
        if not self.unconsumed_requests():
            raise RuntimeError(f"get_request() with no unconsumed request (req_cons "
                               f"{self.req_cons:#x}, req_prod {self.shared.req_prod:#x})")
        data = self.shared._read_slot(self.req_cons)
        self.req_cons = (self.req_cons + 1) & MASK32
        self.counters["requests_consumed"] += 1
        return data

    def put_response(self, data: bytes) -> None:
        """``*RING_GET_RESPONSE(r, rsp_prod_pvt++) = rsp``: write a response, zero-padded
        to the slot, into the slot of the oldest request taken and not yet answered.
        Not visible to the front until :meth:`push_responses_and_check_notify`.
        RuntimeError if every request taken has its response already (the slot would
        belong to a request not yet taken)."""
        if self.rsp_prod_pvt == self.req_cons:
            raise RuntimeError(f"put_response() with no request awaiting a response "
                               f"(req_cons = rsp_prod_pvt = {self.req_cons:#x})")
        self.shared._write_slot(self.rsp_prod_pvt, data)
        self.rsp_prod_pvt = (self.rsp_prod_pvt + 1) & MASK32
        self.counters["responses_produced"] += 1

    def push_responses_and_check_notify(self) -> bool:
        """``RING_PUSH_RESPONSES_AND_CHECK_NOTIFY``: ``old = rsp_prod; rsp_prod =
        rsp_prod_pvt``; notify iff the front's ``rsp_event`` lies in ``(old, new]``. The
        caller sends the event-channel notification when this returns True."""
        old = self.shared.rsp_prod
        new = self.rsp_prod_pvt
        self.shared.rsp_prod = new                  # (xen_wmb before, xen_mb after)
        notify = _notify(new, old, self.shared.rsp_event)
        if notify:
            self.counters["notify_sent"] += 1
        elif new != old:
            self.counters["notify_suppressed"] += 1
        return notify

    def final_check_for_requests(self) -> bool:
        """``RING_FINAL_CHECK_FOR_REQUESTS``: True if requests are waiting (stay awake);
        otherwise set ``req_event = req_cons + 1`` (wake me at the next request) and
        check again, because a request published just before that write sent no
        notification. False means: sleep, a notification will come."""
        if self.unconsumed_requests():
            return True
        self.shared.req_event = (self.req_cons + 1) & MASK32   # (xen_mb after)
        return bool(self.unconsumed_requests())


class FrontRing:
    """The front end's half of the ring (ring.h ``struct __name##_front_ring``): puts
    requests on, takes responses off. The guest's side: hvsim's guest kernel does the
    same in assembly, and this class is its executable reference.

    ``FRONT_RING_ATTACH(r, s, start, PAGE_SIZE)``: ``req_prod_pvt = rsp_cons =
    start`` (``FRONT_RING_INIT`` is ``start = 0``).

    ``counters``: ``requests_produced``, ``responses_consumed``, ``notify_sent``,
    ``notify_suppressed`` (as on :class:`BackRing`).
    """

    def __init__(self, shared: SharedRing, start: int = 0):
        self.shared = shared
        self.size = shared.size
        self.req_prod_pvt = int(start) & MASK32     # next request to write
        self.rsp_cons = int(start) & MASK32         # next response to take
        self.counters = {"requests_produced": 0, "responses_consumed": 0,
                         "notify_sent": 0, "notify_suppressed": 0}

    def free_requests(self) -> int:
        """``RING_FREE_REQUESTS``: ``size - (req_prod_pvt - rsp_cons)``, the slots not
        holding a request or an untaken response (``RING_FULL`` when 0)."""
        return self.size - ((self.req_prod_pvt - self.rsp_cons) & MASK32)

    def put_request(self, data: bytes) -> None:
        """``*RING_GET_REQUEST(r, req_prod_pvt++) = req``: write a request, zero-padded to
        the slot. Not visible to the back until :meth:`push_requests_and_check_notify`.
        RuntimeError if the ring is full."""
        if not self.free_requests():
            raise RuntimeError(f"put_request() on a full ring (req_prod_pvt "
                               f"{self.req_prod_pvt:#x}, rsp_cons {self.rsp_cons:#x})")
        self.shared._write_slot(self.req_prod_pvt, data)
        self.req_prod_pvt = (self.req_prod_pvt + 1) & MASK32
        self.counters["requests_produced"] += 1

    def push_requests_and_check_notify(self) -> bool:
        """``RING_PUSH_REQUESTS_AND_CHECK_NOTIFY``: ``old = req_prod; req_prod =
        req_prod_pvt``; notify iff the back's ``req_event`` lies in ``(old, new]``."""
        old = self.shared.req_prod
        new = self.req_prod_pvt
        self.shared.req_prod = new                  # (xen_wmb before, xen_mb after)
        notify = _notify(new, old, self.shared.req_event)
        if notify:
            self.counters["notify_sent"] += 1
        elif new != old:
            self.counters["notify_suppressed"] += 1
        return notify

    def _rsp_prod(self) -> int:
        """Read the back's ``rsp_prod`` and refuse it unless it lies in ``[rsp_cons,
        req_prod_pvt]``: no more responses than requests made (stricter than ring.h's
        ``RING_RESPONSE_PROD_OVERFLOW``, which allows ``rsp_cons + size``)."""
        prod = self.shared.rsp_prod
        if ((prod - self.rsp_cons) & MASK32) > ((self.req_prod_pvt - self.rsp_cons) & MASK32):
            raise RingError(
                f"back end wrote an impossible rsp_prod {prod:#x}: it must lie in "
                f"[rsp_cons {self.rsp_cons:#x}, req_prod_pvt {self.req_prod_pvt:#x}] modulo 2**32",
                "rsp_prod", prod, {"rsp_cons": self.rsp_cons, "req_prod_pvt": self.req_prod_pvt})
        return prod

    def unconsumed_responses(self) -> int:
        """``RING_HAS_UNCONSUMED_RESPONSES``: ``rsp_prod - rsp_cons``. Raises
        :class:`RingError` if ``rsp_prod`` is impossible."""
        return (self._rsp_prod() - self.rsp_cons) & MASK32

    def get_response(self) -> bytes:
        """``RING_COPY_RESPONSE(r, rsp_cons++, &rsp)``: a copy of the next response's
        slot. RuntimeError if none is waiting."""
        if not self.unconsumed_responses():
            raise RuntimeError(f"get_response() with no unconsumed response (rsp_cons "
                               f"{self.rsp_cons:#x}, rsp_prod {self.shared.rsp_prod:#x})")
        data = self.shared._read_slot(self.rsp_cons)
        self.rsp_cons = (self.rsp_cons + 1) & MASK32
        self.counters["responses_consumed"] += 1
        return data

    def final_check_for_responses(self) -> bool:
        """``RING_FINAL_CHECK_FOR_RESPONSES``: True if responses are waiting; otherwise
        set ``rsp_event = rsp_cons + 1`` and check again (see
        :meth:`BackRing.final_check_for_requests`)."""
        if self.unconsumed_responses():
            return True
        self.shared.rsp_event = (self.rsp_cons + 1) & MASK32   # (xen_mb after)
        return bool(self.unconsumed_responses())


# --- hvsim's block request (in a slot; little-endian; the rest of the slot zero) ------
#
#    0                 4          5             6          8                12               16
#   +-----------------+----------+-------------+----------+----------------+----------------+
#   |   id (u32)      | operation| nr_segments |  handle  |  sector (u32)  |  buffer (u32)  |
#   |                 |   (u8)   |  (u8) = 1   |  (u16)   |  512-byte unit |  gpa of 512 B  |
#   +-----------------+----------+-------------+----------+----------------+----------------+
#     id: the front's tag, echoed in the response. operation: BLKIF_OP_READ / _WRITE.
#     handle: the virtual disk. buffer: guest-physical address of one 512-byte buffer
#     (Xen's blkif names buffers by grant reference instead; hvsim has no grant tables
#     here, so the back end must check the address lies in the guest's memory).
_BLK_REQUEST = struct.Struct("<IBBHII")
BLK_REQUEST_SIZE = _BLK_REQUEST.size            # 16


def _check_field(name: str, value: int, bits: int) -> int:
    value = int(value)
    if not 0 <= value < 1 << bits:
        raise ValueError(f"{name} {value:#x} does not fit in {bits} bits")
    return value


@dataclasses.dataclass
class BlkRequest:
    """One block request (hvsim's blkif-shaped format, drawn above)."""
    id: int
    operation: int
    sector: int
    buffer: int
    handle: int = 0
    nr_segments: int = 1

    def pack(self) -> bytes:
        """The request's 16 bytes. ValueError if a field does not fit."""
        return _BLK_REQUEST.pack(_check_field("id", self.id, 32),
                                 _check_field("operation", self.operation, 8),
                                 _check_field("nr_segments", self.nr_segments, 8),
                                 _check_field("handle", self.handle, 16),
                                 _check_field("sector", self.sector, 32),
                                 _check_field("buffer", self.buffer, 32))

    @classmethod
    def unpack(cls, data: bytes) -> "BlkRequest":
        """Decode the first 16 bytes of a slot. Any bytes decode (a guest may write
        anything): checking the operation, segment count and buffer is the back end's
        job. ValueError only if fewer than 16 bytes are given."""
        if len(data) < BLK_REQUEST_SIZE:
            raise ValueError(f"a block request is {BLK_REQUEST_SIZE} bytes, got {len(data)}")
        id_, op, nseg, handle, sector, buffer = _BLK_REQUEST.unpack_from(data)
        return cls(id=id_, operation=op, sector=sector, buffer=buffer, handle=handle,
                   nr_segments=nseg)


# --- hvsim's block response (in the request's slot; the rest of the slot zero) --------
#
#    0                 4          5          6                8
#   +-----------------+----------+----------+----------------+
#   |   id (u32)      | operation|   pad    |  status (i16)  |
#   |  from request   |  (u8)    |   (0)    |  BLKIF_RSP_*   |
#   +-----------------+----------+----------+----------------+
#     Xen's blkif_response is {u64 id; u8 operation; i16 status} (status at +10).
_BLK_RESPONSE = struct.Struct("<IBxh")
BLK_RESPONSE_SIZE = _BLK_RESPONSE.size          # 8


@dataclasses.dataclass
class BlkResponse:
    """One block response (hvsim's blkif-shaped format, drawn above)."""
    id: int
    operation: int
    status: int

    def pack(self) -> bytes:
        """The response's 8 bytes. ValueError if a field does not fit."""
        status = int(self.status)
        if not -(1 << 15) <= status < 1 << 15:
            raise ValueError(f"status {status} does not fit in an i16")
        return _BLK_RESPONSE.pack(_check_field("id", self.id, 32),
                                  _check_field("operation", self.operation, 8), status)

    @classmethod
    def unpack(cls, data: bytes) -> "BlkResponse":
        """Decode the first 8 bytes of a slot (``status`` signed). ValueError only if
        fewer than 8 bytes are given."""
        if len(data) < BLK_RESPONSE_SIZE:
            raise ValueError(f"a block response is {BLK_RESPONSE_SIZE} bytes, got {len(data)}")
        id_, op, status = _BLK_RESPONSE.unpack_from(data)
        return cls(id=id_, operation=op, status=status)
