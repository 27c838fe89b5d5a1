"""The state layout (hvsim/arch/layout.py): every slot of the state array has one owner.

Slots are plain module-level ints, so two names could silently share a slot (each
engineer adding "the next free number"). This test reads every constant of the module,
tells slots from the other constants by name, and checks that no two slots and no two
regions overlap, that the exit-info names lie inside their block, and that everything
fits in ST_SIZE. A new constant that is not a slot must match one of the patterns below.
"""
import re

import hvsim.arch.layout as L

# constants of layout.py that are not slots: values, bit masks, sizes, counts
NOT_A_SLOT = re.compile(r"^(MASK32|SREG_\w+|AR_\w+|BLOCKING_BY_\w+|FAULT_(NONE|EXCEPTION|BUS|"
                        r"SHUTDOWN|INTERNAL|VMEXIT)|VMCS_PTR_NONE|ROUTE_(GUEST|HOST)|PG_\w+|N_\w+|DC_\w+|TLB_FIELDS|"
                        r"TRACE_FIELDS|KTAB_\w+|\w+_CAP|(ST|EXIT_INFO|VMCS_CACHE|GUEST_CONTEXT)_SIZE|"
                        r"ITRACE_(KIND_\w+|MODE_\w+|RECORD_\w+|RESERVE|SIZE))$")
# slots that start a region of several, and the region's length
REGIONS = {
    "SEG_SEL": L.N_SREGS, "SEG_BASE": L.N_SREGS, "SEG_LIMIT": L.N_SREGS, "SEG_AR": L.N_SREGS,
    "ROUTE": 256, "PORTMAP": L.N_PORTS, "CONSOLE_BUF": L.CONSOLE_CAP,
    "TRACE_BUF": L.TRACE_CAP * L.TRACE_FIELDS, "COUNTERS": L.N_COUNTERS, "BP_LIST": L.BP_CAP,
    "EXIT_INFO": L.EXIT_INFO_SIZE, "VMCS_CACHE": L.VMCS_CACHE_SIZE,
    "GUEST_CONTEXT": L.GUEST_CONTEXT_SIZE, "ITRACE": L.ITRACE_SIZE,
}


def _slots():
    return {k: v for k, v in vars(L).items()
            if k.isupper() and isinstance(v, int) and not NOT_A_SLOT.match(k)}


def test_every_slot_and_region_has_its_own_place_in_the_state_array():
    slots = _slots()
    exit_fields = {k: v for k, v in slots.items() if k.startswith("EXIT_") and k != "EXIT_INFO"}
    # the instruction trace's block (hvsim/cpu/itrace.py): its slots, distinct, inside it
    itrace = {k: v for k, v in slots.items() if k.startswith("ITRACE_")}
    assert len(set(itrace.values())) == len(itrace) and itrace
    assert all(L.ITRACE <= v < L.ITRACE + L.ITRACE_SIZE for v in itrace.values()), itrace
    spans = []
    for name, start in slots.items():
        if name in exit_fields or name in itrace:
            continue
        spans.append((start, start + REGIONS.get(name, 1), name))
    spans.sort()
    for (a0, a1, a), (b0, b1, b) in zip(spans, spans[1:]):
        assert a1 <= b0, f"{a} [{a0}, {a1}) overlaps {b} [{b0}, {b1})"
    assert spans[0][0] >= 0 and spans[-1][1] <= L.ST_SIZE, spans[-1]
    # the exit-info block: its names are distinct slots inside it
    lo, hi = L.EXIT_INFO, L.EXIT_INFO + L.EXIT_INFO_SIZE
    assert len(set(exit_fields.values())) == len(exit_fields)
    assert all(lo <= v < hi for v in exit_fields.values()), exit_fields
    assert len(exit_fields) >= 29                     # kind .. linear address


def test_the_registers_sit_where_modrm_numbers_them():
    """General registers in ModRM reg-field order (SDM Vol. 2A, Table 2-2): a decoded
    register number indexes the state array directly."""
    assert [L.EAX, L.ECX, L.EDX, L.EBX, L.ESP, L.EBP, L.ESI, L.EDI] == list(range(8))
    assert L.ZERO not in range(8) and L.ZERO < 128


def test_a_constant_that_is_neither_a_slot_nor_named_as_a_value_is_caught():
    """The name rule itself: a value constant named like a slot would be checked as one."""
    assert NOT_A_SLOT.match("TRACE_CAP") and NOT_A_SLOT.match("FAULT_INTERNAL")
    assert not NOT_A_SLOT.match("FAULT_PENDING") and not NOT_A_SLOT.match("EXIT_KIND")
    assert "DR7" in _slots() and "ST_SIZE" not in _slots() and "EXIT_SIZE" in _slots()
