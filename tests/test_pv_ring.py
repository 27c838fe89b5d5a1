"""hvsim.paravirt.ring: Xen's shared I/O ring (io/ring.h) over a numpy page.

* **Layout**: every header field and a packed block request/response at its exact
  bytes; ring sizes; SHARED_RING_INIT.
* **The notification rule, directed**: a sleeping consumer is woken by the first push
  only; a batch notifies once; the final check's second look catches a push that
  landed before its write of the event index.
* **Random interleavings** (seeded): a front end and a back end take random atomic
  steps -- push k requests, take some, answer some in any order, final-check and
  sleep -- with a push sometimes landing in the middle of the other end's final check.
  Oracles: every request taken once and in order, every response once; after every
  step a sleeping consumer has nothing waiting (no lost wakeup); each push's notify
  equals "the consumer's event index lies in (old, new]" computed by enumerating the
  range; the counters equal the oracle's tallies; the run drains to quiescence. Half
  the seeds start the indices just below 2**32. Two broken back ends (no second look;
  event index one too low) must be caught by the same model.
* **A hostile guest**: impossible req_prod values raise RingError naming the indices;
  random scribbling over the whole page never makes the back end raise anything else,
  write outside the page, or break its own invariant.

``--long`` / ``HVSIM_LONG=1`` also runs ten times as many seeds, with longer runs.
"""
import collections
import doctest
import random

import numpy as np
import pytest

import hvsim.paravirt.ring as ring
from hvsim.paravirt.ring import (BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_RSP_EOPNOTSUPP,
                                 BLKIF_RSP_ERROR, BLKIF_RSP_OKAY, BackRing, BlkRequest,
                                 BlkResponse, FrontRing, RingError, SharedRing)

M = 0xFFFF_FFFF
BASE = 0x1000
SEEDS = range(300)


def make(slot_size=64, start=0, shared_cls=SharedRing, fill=0):
    mem = np.full(3 * 4096, fill, np.uint8)
    sring = shared_cls(mem, BASE, slot_size)
    sring.init(start)
    return mem, sring, FrontRing(sring, start), BackRing(sring, start)


def page(mem, start, n):
    return bytes(mem[BASE + start:BASE + start + n])


def request(n):
    return BlkRequest(id=n, operation=n % 2, sector=(n * 7) & M, buffer=0x2000 + 512 * (n % 4))


# ---- layout ------------------------------------------------------------------------------
def test_header_fields_are_little_endian_u32s_at_0_4_8_12():
    mem, sring, _, _ = make()
    sring.req_prod, sring.req_event = 0x11223344, 0x55667788
    sring.rsp_prod, sring.rsp_event = 0x99AABBCC, 0xDDEEFF01
    assert page(mem, 0, 16) == bytes.fromhex("44332211 88776655 ccbbaa99 01ffeedd")
    assert (sring.req_prod, sring.req_event, sring.rsp_prod, sring.rsp_event) == \
        (0x11223344, 0x55667788, 0x99AABBCC, 0xDDEEFF01)
    assert not mem[:BASE].any() and not mem[BASE + 16:].any()


def test_init_is_shared_ring_init_and_leaves_the_slots_alone():
    mem = np.full(3 * 4096, 0xAA, np.uint8)
    sring = SharedRing(mem, BASE)
    assert page(mem, 0, 4) == b"\xaa" * 4               # constructing touches nothing
    sring.init()
    assert page(mem, 0, 64) == bytes.fromhex("00000000 01000000 00000000 01000000") + bytes(48)
    assert page(mem, 64, 4096 - 64) == b"\xaa" * (4096 - 64)
    sring.init(start=0xFFFFFFFF)                        # the wrap-around test set-up
    assert page(mem, 0, 16) == bytes.fromhex("ffffffff 00000000 ffffffff 00000000")


@pytest.mark.parametrize("slot_size, size", [(64, 32), (16, 128), (112, 32), (4, 512),
                                             (256, 8), (1024, 2), (2016, 2), (2020, 1),
                                             (4032, 1)])
def test_ring_size_is_what_fits_after_the_header_rounded_down_to_a_power_of_two(slot_size, size):
    # 64: 4032 // 64 = 63 -> 32; 16: 252 -> 128; 112 (Xen's blkif_request on x86-64): 36 -> 32
    assert SharedRing(np.zeros(4096, np.uint8), 0, slot_size).size == size
    assert ring.ring_size(slot_size) == size


def test_slot_offsets_are_masked_free_running_indices():
    _, sring, _, _ = make()
    assert sring.slot(0) == BASE + 64
    assert sring.slot(1) == BASE + 128
    assert sring.slot(31) == BASE + 64 + 31 * 64
    assert sring.slot(32) == BASE + 64
    assert sring.slot(0xFFFFFFFF) == BASE + 64 + 31 * 64
    _, sring16, _, _ = make(slot_size=16)
    assert sring16.slot(129) == BASE + 64 + 16


def test_block_request_and_response_bytes():
    req = BlkRequest(id=0x01020304, operation=BLKIF_OP_WRITE, sector=0x0A0B0C0D,
                     buffer=0x00123400, handle=0x5566)
    assert req.pack() == bytes.fromhex("04030201 01 01 6655 0d0c0b0a 00341200")
    assert BlkRequest.unpack(req.pack()) == req
    rsp = BlkResponse(id=0xDEADBEEF, operation=BLKIF_OP_WRITE, status=BLKIF_RSP_EOPNOTSUPP)
    assert rsp.pack() == bytes.fromhex("efbeadde 01 00 feff")
    assert BlkResponse.unpack(rsp.pack()) == rsp
    error = BlkResponse(1, BLKIF_OP_READ, BLKIF_RSP_ERROR)
    assert error.pack() == bytes.fromhex("01000000 00 00 ffff")
    assert (BLKIF_OP_READ, BLKIF_OP_WRITE) == (0, 1)
    assert (BLKIF_RSP_OKAY, BLKIF_RSP_ERROR, BLKIF_RSP_EOPNOTSUPP) == (0, -1, -2)


def test_a_request_and_its_response_fill_the_same_slot_zero_padded():
    mem, sring, front, back = make(fill=0xAA)
    front.put_request(BlkRequest(id=5, operation=BLKIF_OP_READ, sector=9, buffer=0x2200).pack())
    assert page(mem, 64, 64) == bytes.fromhex("05000000 00 01 0000 09000000 00220000") + bytes(48)
    assert page(mem, 128, 4) == b"\xaa" * 4             # the next slot untouched
    front.push_requests_and_check_notify()
    got = back.get_request()
    assert len(got) == 64 and BlkRequest.unpack(got).sector == 9
    back.put_response(BlkResponse(id=5, operation=BLKIF_OP_READ, status=BLKIF_RSP_OKAY).pack())
    assert page(mem, 64, 64) == bytes.fromhex("05000000 00 00 0000") + bytes(56)


def test_unpack_decodes_any_bytes_a_guest_could_write():
    rng = random.Random(1)
    for _ in range(200):
        raw = bytes(rng.randrange(256) for _ in range(16))
        req = BlkRequest.unpack(raw)
        assert req.pack() == raw
        assert BlkResponse.unpack(raw[:8]).status in range(-32768, 32768)
    with pytest.raises(ValueError, match="16 bytes, got 15"):
        BlkRequest.unpack(bytes(15))


@pytest.mark.parametrize("field, kwargs", [("id", dict(id=1 << 32)),
                                           ("operation", dict(operation=256)),
                                           ("sector", dict(sector=-1)),
                                           ("handle", dict(handle=1 << 16))])
def test_pack_refuses_a_field_that_does_not_fit(field, kwargs):
    fields = dict(id=1, operation=0, sector=0, buffer=0, handle=0) | kwargs
    with pytest.raises(ValueError, match=field):
        BlkRequest(**fields).pack()


def test_status_must_fit_an_i16():
    with pytest.raises(ValueError, match="status 32768"):
        BlkResponse(1, 0, 32768).pack()


def test_writes_reach_guest_memory_through_its_write_hook():
    from hvsim.machine import GuestMemory
    mem = np.zeros(3 * 4096, np.uint8).view(GuestMemory)
    writes = []
    mem._on_write = lambda: writes.append(1)
    sring = SharedRing(mem, BASE)
    sring.init()
    assert writes
    n = len(writes)
    FrontRing(sring).put_request(request(0).pack())
    assert len(writes) > n


def test_doctests():
    result = doctest.testmod(ring)
    assert result.attempted > 0 and result.failed == 0


# ---- the notification rule, directed ------------------------------------------------------
def test_a_sleeping_consumer_is_woken_once_and_a_batch_notifies_once():
    _, sring, front, back = make()
    assert back.final_check_for_requests() is False     # nothing there: sleep
    assert sring.req_event == 1                         # wake me at request 0
    front.put_request(request(0).pack())
    assert front.push_requests_and_check_notify() is True
    front.put_request(request(1).pack())
    assert front.push_requests_and_check_notify() is False   # already woken
    for n in range(2, 5):
        front.put_request(request(n).pack())
    assert front.push_requests_and_check_notify() is False
    assert front.push_requests_and_check_notify() is False   # nothing new: not counted
    assert front.counters == {"requests_produced": 5, "responses_consumed": 0,
                              "notify_sent": 1, "notify_suppressed": 2}
    assert [BlkRequest.unpack(back.get_request()).id for _ in range(5)] == [0, 1, 2, 3, 4]
    assert back.final_check_for_requests() is False
    assert sring.req_event == 6
    for n in range(5, 8):
        front.put_request(request(n).pack())
    assert front.push_requests_and_check_notify() is True    # one notification for 3
    assert front.counters["notify_sent"] == 2 and front.counters["notify_suppressed"] == 2


def test_an_awake_consumer_is_not_notified_and_final_check_with_work_keeps_the_event():
    _, sring, front, back = make()
    front.put_request(request(0).pack())
    assert front.push_requests_and_check_notify() is True
    back.get_request()                                  # awake, working; req_event still 1
    front.put_request(request(1).pack())
    assert front.push_requests_and_check_notify() is False
    assert back.final_check_for_requests() is True      # work: stay awake
    assert sring.req_event == 1                         # ... and the event is untouched


def test_responses_follow_the_same_rule():
    _, sring, front, back = make()
    for n in range(3):
        front.put_request(request(n).pack())
    front.push_requests_and_check_notify()
    for _ in range(3):
        back.get_request()
    back.put_response(BlkResponse(0, 0, 0).pack())
    assert back.push_responses_and_check_notify() is True    # rsp_event 1 in (0, 1]
    back.put_response(BlkResponse(1, 1, 0).pack())
    assert back.push_responses_and_check_notify() is False
    assert front.unconsumed_responses() == 2
    front.get_response(), front.get_response()
    assert front.final_check_for_responses() is False and sring.rsp_event == 3
    back.put_response(BlkResponse(2, 0, 0).pack())
    assert back.push_responses_and_check_notify() is True
    assert back.counters == {"requests_consumed": 3, "responses_produced": 3,
                             "notify_sent": 2, "notify_suppressed": 1}


class PreemptibleRing(SharedRing):
    """A SharedRing that runs ``hook(when)`` just before ('before') or after ('after')
    an end writes an event index: the other end preempting a final check there."""
    hook = None

    def _set32(self, offset, name, value):
        hook = self.hook if name in ("req_event", "rsp_event") else None
        if hook:
            self.hook = None                            # one shot
            hook("before")
        super()._set32(offset, name, value)
        if hook:
            hook("after")


def test_the_final_checks_second_look_finds_a_push_that_saw_the_old_event():
    _, sring, front, back = make(shared_cls=PreemptibleRing)
    front.put_request(request(0).pack())
    front.push_requests_and_check_notify()
    back.get_request()                                  # awake; req_event stays 1
    pushed = []

    def front_runs(when):
        if when == "before":                            # between the first look and the write
            front.put_request(request(1).pack())
            pushed.append(front.push_requests_and_check_notify())
    sring.hook = front_runs
    assert back.final_check_for_requests() is True      # the second look sees request 1
    assert pushed == [False]                            # ... which notified nobody
    assert sring.req_event == 2


@pytest.mark.parametrize("event, notify", [(0xFFFFFFFE, False), (0xFFFFFFFF, True), (0, True),
                                           (1, True), (2, False), (0x80000000, False)])
def test_notify_iff_the_event_lies_in_old_new_across_the_wrap(event, notify):
    # old = 0xFFFFFFFE, new = 1: requests 0xFFFFFFFE, 0xFFFFFFFF and 0 are published
    _, sring, front, _ = make(start=0xFFFFFFFE)
    for n in range(3):
        front.put_request(request(n).pack())
    sring.req_event = event
    assert front.push_requests_and_check_notify() is notify
    assert sring.req_prod == 1


# ---- random interleavings -----------------------------------------------------------------
class LostWakeup(AssertionError):
    pass


def in_range(event, old, new):
    """The oracle for a push: is ``event`` one of old+1, ..., new (mod 2**32)?"""
    return any(((old + j) & M) == event for j in range(1, ((new - old) & M) + 1))


class Model:
    """A front end and a back end taking random atomic steps over one ring.

    A consumer that sleeps (its final check said False) runs again only when the
    producer's push says notify; an I/O completion runs the back end regardless (a disk
    interrupt), and new requests come whenever the front likes. ``step`` checks, after
    every step, that a sleeping consumer has nothing waiting.
    """

    def __init__(self, seed, back_cls=BackRing, front_cls=FrontRing):
        self.rng = rng = random.Random(seed)
        self.start = rng.choice([0, rng.randrange(1 << 32), (1 << 32) - 5 - rng.randrange(8),
                                 (1 << 32) - 5 - rng.randrange(8)])
        self.sring = PreemptibleRing(np.zeros(3 * 4096, np.uint8), BASE,
                                     rng.choice([64, 256, 1024, 2048]))   # 32, 8, 2, 1 slots
        self.sring.init(self.start)
        self.front = front_cls(self.sring, self.start)
        self.back = back_cls(self.sring, self.start)
        self.back_awake = self.front_awake = False    # SHARED_RING_INIT: both wait for entry 0
        self.made = 0                   # requests the front has written
        self.taken = []                 # ids the back took, in order
        self.in_flight = []             # requests taken, not yet answered
        self.status = {}                # id -> the status the back answered
        self.answered = []              # ids of responses the front took
        self.producing = True           # False while draining: no new requests
        self.oracle = {"req": collections.Counter(), "rsp": collections.Counter()}

    # -- producers: push and compare with the oracle --
    def push_requests(self):
        old, new, event = self.sring.req_prod, self.front.req_prod_pvt, self.sring.req_event
        notify = self.front.push_requests_and_check_notify()
        assert notify == in_range(event, old, new), (old, new, event)
        self.oracle["req"]["sent" if notify else "suppressed" if new != old else "empty"] += 1
        if notify:
            self.back_awake = True
        return notify

    def push_responses(self):
        old, new, event = self.sring.rsp_prod, self.back.rsp_prod_pvt, self.sring.rsp_event
        notify = self.back.push_responses_and_check_notify()
        assert notify == in_range(event, old, new), (old, new, event)
        self.oracle["rsp"]["sent" if notify else "suppressed" if new != old else "empty"] += 1
        if notify:
            self.front_awake = True
        return notify

    def produce(self):
        for _ in range(self.rng.randint(0, self.front.free_requests())):
            self.front.put_request(request(self.made).pack())
            self.made += 1
        if self.rng.random() < 0.8:
            self.push_requests()

    def complete(self):
        for _ in range(self.rng.randint(1, len(self.in_flight))):
            req = self.in_flight.pop(self.rng.randrange(len(self.in_flight)))   # any order
            status = self.rng.choice([BLKIF_RSP_OKAY, BLKIF_RSP_ERROR, BLKIF_RSP_EOPNOTSUPP])
            self.status[req.id] = status
            self.back.put_response(BlkResponse(req.id, req.operation, status).pack())
        if self.rng.random() < 0.8:
            self.push_responses()

    # -- consumers --
    def take_requests(self):
        for _ in range(self.rng.randint(1, self.back.unconsumed_requests())):
            req = BlkRequest.unpack(self.back.get_request())
            assert req == request(req.id)
            self.taken.append(req.id)
            self.in_flight.append(req)

    def take_responses(self):
        for _ in range(self.rng.randint(1, self.front.unconsumed_responses())):
            rsp = BlkResponse.unpack(self.front.get_response())
            assert rsp.status == self.status[rsp.id] and rsp.operation == rsp.id % 2
            self.answered.append(rsp.id)

    def sleep(self, end):
        """The consumer's final check, with the producer sometimes running just before
        or just after the consumer writes its event index."""
        woken = []
        if self.producing and self.rng.random() < 0.4:
            moment = self.rng.choice(["before", "after"])

            def producer_runs(when):
                if when == moment:
                    producer = self.produce_and_push if end == "back" else self.complete_and_push
                    woken.append(producer())
            self.sring.hook = producer_runs
        if end == "back":
            work = self.back.final_check_for_requests()
            self.back_awake = work or any(woken)
        else:
            work = self.front.final_check_for_responses()
            self.front_awake = work or any(woken)
        self.sring.hook = None

    def produce_and_push(self):
        free = self.front.free_requests()
        for _ in range(self.rng.randint(1, free) if free else 0):
            self.front.put_request(request(self.made).pack())
            self.made += 1
        return self.push_requests()

    def complete_and_push(self):
        if self.in_flight:
            self.complete()
        return self.push_responses()

    # -- the scheduler --
    def actions(self, producing):
        acts = []
        if producing and self.front.free_requests():
            acts.append(self.produce)
        if self.front.req_prod_pvt != self.sring.req_prod:
            acts.append(self.push_requests)
        if self.back_awake:
            acts.append(lambda: self.sleep("back"))
            if self.back.unconsumed_requests():
                acts.append(self.take_requests)
        if self.in_flight:
            acts.append(self.complete)
        if self.back.rsp_prod_pvt != self.sring.rsp_prod:
            acts.append(self.push_responses)
        if self.front_awake:
            acts.append(lambda: self.sleep("front"))
            if self.front.unconsumed_responses():
                acts.append(self.take_responses)
        return acts

    def check_no_lost_wakeup(self):
        if not self.back_awake and self.sring.req_prod != self.back.req_cons:
            raise LostWakeup(f"back asleep with requests {self.back.req_cons:#x}.."
                             f"{self.sring.req_prod:#x} waiting (req_event {self.sring.req_event:#x})")
        if not self.front_awake and self.sring.rsp_prod != self.front.rsp_cons:
            raise LostWakeup(f"front asleep with responses {self.front.rsp_cons:#x}.."
                             f"{self.sring.rsp_prod:#x} waiting (rsp_event {self.sring.rsp_event:#x})")

    def run(self, steps):
        for _ in range(steps):
            self.rng.choice(self.actions(producing=True))()
            self.check_no_lost_wakeup()
        self.producing = False
        for _ in range(100_000):                        # drain: no new requests
            acts = self.actions(producing=False)
            if not acts:
                break
            self.rng.choice(acts)()
            self.check_no_lost_wakeup()
        else:
            raise AssertionError("the ring never went quiet")


def check_model(seed, steps):
    m = Model(seed)
    m.run(steps)
    # quiescent: both ends asleep, nothing waiting, nothing unpushed
    assert not m.back_awake and not m.front_awake and not m.in_flight
    assert m.front.req_prod_pvt == m.sring.req_prod == m.back.req_cons
    assert m.back.rsp_prod_pvt == m.sring.rsp_prod == m.front.rsp_cons
    assert m.made > 0
    assert m.taken == list(range(m.made))               # every request once, in order
    assert sorted(m.answered) == list(range(m.made))    # every response once
    assert (m.sring.req_prod - m.start) & M == m.made   # the free-running index moved by that
    if m.start > M - 50:
        assert m.sring.req_prod < m.start               # it really wrapped
    fc, bc = m.front.counters, m.back.counters
    assert fc == {"requests_produced": m.made, "responses_consumed": m.made,
                  "notify_sent": m.oracle["req"]["sent"],
                  "notify_suppressed": m.oracle["req"]["suppressed"]}
    assert bc == {"requests_consumed": m.made, "responses_produced": m.made,
                  "notify_sent": m.oracle["rsp"]["sent"],
                  "notify_suppressed": m.oracle["rsp"]["suppressed"]}
    return m


@pytest.mark.parametrize("seed", SEEDS)
def test_random_interleavings_lose_nothing_and_no_wakeup(seed):
    check_model(seed, steps=300)


@pytest.mark.slow
def test_random_interleavings_long():
    for seed in range(SEEDS.stop, SEEDS.stop + 10 * len(SEEDS)):
        check_model(seed, steps=1000)


def test_the_model_suppresses_and_wraps_often_enough_to_mean_something():
    ms = [check_model(seed, steps=300) for seed in range(40)]
    assert sum(m.oracle["req"]["suppressed"] for m in ms) > 100
    assert sum(m.oracle["rsp"]["suppressed"] for m in ms) > 100
    assert sum(m.start > M - 50 for m in ms) >= 10


class BackWithoutSecondLook(BackRing):
    def final_check_for_requests(self):
        if self.unconsumed_requests():
            return True
        self.shared.req_event = (self.req_cons + 1) & M
        return False


class BackWithEventOneLow(BackRing):
    def final_check_for_requests(self):
        if self.unconsumed_requests():
            return True
        self.shared.req_event = self.req_cons
        return bool(self.unconsumed_requests())


class FrontWithoutSecondLook(FrontRing):
    def final_check_for_responses(self):
        if self.unconsumed_responses():
            return True
        self.shared.rsp_event = (self.rsp_cons + 1) & M
        return False


@pytest.mark.parametrize("back_cls, front_cls", [(BackWithoutSecondLook, FrontRing),
                                                 (BackWithEventOneLow, FrontRing),
                                                 (BackRing, FrontWithoutSecondLook)])
def test_the_model_catches_a_broken_final_check(back_cls, front_cls):
    caught = 0
    for seed in range(30):
        try:
            Model(seed, back_cls, front_cls).run(300)
        except LostWakeup:
            caught += 1
    assert caught >= 10


# ---- a hostile guest ----------------------------------------------------------------------
def test_req_prod_more_than_a_ring_ahead_is_a_ring_error_naming_the_indices():
    _, sring, _, back = make()
    sring.req_prod = 33                                 # 33 requests outstanding, 32 slots
    for call in (back.unconsumed_requests, back.get_request, back.final_check_for_requests):
        with pytest.raises(RingError, match=r"req_prod 0x21: 33 requests outstanding, more than "
                                            r"the ring's 32.*req_cons 0x0, rsp_prod_pvt 0x0"):
            call()
    err = pytest.raises(RingError, back.unconsumed_requests).value
    assert (err.field, err.value, err.indices) == ("req_prod", 33,
                                                   {"req_cons": 0, "rsp_prod_pvt": 0, "size": 32})
    assert (back.req_cons, back.rsp_prod_pvt, back.counters["requests_consumed"]) == (0, 0, 0)
    assert sring.req_event == 1                         # final_check wrote nothing
    sring.req_prod = 32                                 # a full ring is fine
    assert back.unconsumed_requests() == 32


def test_req_prod_is_checked_against_the_responses_still_owed():
    _, sring, _, back = make(start=0xFFFFFFF0)
    sring.req_prod = 0xFFFFFFF3
    for _ in range(3):
        back.get_request()
    back.put_response(bytes(8))         # rsp_prod_pvt 0xFFFFFFF1, req_cons 0xFFFFFFF3
    sring.req_prod = (0xFFFFFFF1 + 32) & M      # 32 outstanding: allowed (RING_REQUEST_PROD_OVERFLOW)
    assert back.unconsumed_requests() == 30
    sring.req_prod = (0xFFFFFFF1 + 33) & M
    with pytest.raises(RingError, match="33 requests outstanding"):
        back.unconsumed_requests()
    sring.req_prod = 0xFFFFFFF2                         # behind req_cons: moved backwards
    with pytest.raises(RingError, match=r"req_prod 0xfffffff2: 1 behind req_cons"):
        back.get_request()
    sring.req_prod = 0xFFFFFFF3
    assert back.unconsumed_requests() == 0


def test_a_backend_lying_about_rsp_prod_is_a_ring_error_for_the_front():
    _, sring, front, _ = make()
    front.put_request(request(0).pack())
    front.push_requests_and_check_notify()
    sring.rsp_prod = 2                                  # two responses to one request
    with pytest.raises(RingError, match=r"rsp_prod 0x2.*\[rsp_cons 0x0, req_prod_pvt 0x1\]"):
        front.get_response()
    assert front.rsp_cons == 0


def test_random_scribbling_never_breaks_the_back_end():
    """The guest writes any bytes anywhere in the page at any time; the back end serves
    the ring as a hypervisor would. It may only raise RingError, never writes outside
    the ring page, and its own indices stay consistent."""
    outcomes = collections.Counter()
    for seed in range(100):
        rng = random.Random(seed)
        mem = np.zeros(3 * 4096, np.uint8)
        mem[:BASE] = 0x5A
        mem[BASE + 4096:] = 0xA5
        sring = SharedRing(mem, BASE, rng.choice([16, 64, 2048]))
        start = rng.choice([0, (1 << 32) - 3])
        sring.init(start)
        back = BackRing(sring, start)
        for _ in range(200):
            what = rng.random()
            if what < 0.3:                              # a plausible req_prod
                sring.req_prod = (back.req_cons + rng.randint(-3, sring.size + 3)) & M
            elif what < 0.4:                            # any header word
                sring._set32(rng.choice([0, 4, 8, 12]), "field", rng.randrange(1 << 32))
            elif what < 0.5:                            # any bytes in the page
                a = BASE + rng.randrange(4096 - 8)
                mem[a:a + 8] = np.frombuffer(rng.randbytes(8), np.uint8)
            try:
                n = back.unconsumed_requests()
                for _ in range(rng.randint(0, n)):
                    req = BlkRequest.unpack(back.get_request())
                    rsp = BlkResponse(req.id, req.operation, BLKIF_RSP_EOPNOTSUPP)
                    back.put_response(rsp.pack())
                back.push_responses_and_check_notify()
                back.final_check_for_requests()
                outcomes["served"] += 1
            except RingError:
                outcomes["refused"] += 1
            assert 0 <= (back.req_cons - back.rsp_prod_pvt) & M <= sring.size
        assert (mem[:BASE] == 0x5A).all() and (mem[BASE + 4096:] == 0xA5).all()
    assert outcomes["served"] > 1000 and outcomes["refused"] > 1000


# ---- bad arguments and misuse ---------------------------------------------------------------
@pytest.mark.parametrize("size, base, message", [
    (0x3000, 0x1010, r"ring page base 0x1010 is not 4 KiB aligned"),
    (0x2800, 0x2000, r"ring page 0x2000..0x2fff is outside memory 0x0..0x27ff"),
    (0x3000, -0x1000, r"ring page -0x1000..-0x1 is outside memory 0x0..0x2fff"),
])
def test_base_must_be_an_aligned_page_inside_memory(size, base, message):
    with pytest.raises(ValueError, match=message):
        SharedRing(np.zeros(size, np.uint8), base)


def test_mem_and_slot_size_are_checked():
    with pytest.raises(ValueError, match="not bytearray"):
        SharedRing(bytearray(4096), 0)
    with pytest.raises(ValueError, match="not uint32"):
        SharedRing(np.zeros(1024, np.uint32), 0)
    for bad in (0, 6, 4036):
        with pytest.raises(ValueError, match=f"slot_size {bad} must be a multiple of 4"):
            SharedRing(np.zeros(4096, np.uint8), 0, bad)


def test_misusing_an_end_is_a_runtime_error_and_changes_nothing():
    mem, sring, front, back = make(slot_size=1024)      # 2 slots
    before = mem.copy()
    with pytest.raises(RuntimeError, match="no unconsumed request"):
        back.get_request()
    with pytest.raises(RuntimeError, match="no request awaiting a response"):
        back.put_response(bytes(8))
    with pytest.raises(RuntimeError, match="no unconsumed response"):
        front.get_response()
    assert (mem == before).all()
    front.put_request(request(0).pack())
    front.put_request(request(1).pack())
    with pytest.raises(RuntimeError, match="full ring"):
        front.put_request(request(2).pack())
    with pytest.raises(ValueError, match="1025 bytes do not fit in a 1024-byte slot"):
        FrontRing(sring, 5).put_request(bytes(1025))
    with pytest.raises(ValueError, match="req_prod must be a u32"):
        sring.req_prod = 1 << 32
