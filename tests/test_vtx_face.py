"""VT-x on the faces: the ring indicator's ring -1, the stepper's trap log, the timeline."""
import pytest

from hvsim import Machine
from hvsim.guests import hypervisor, teaching_kernel
from hvsim.monitors import Vtx
from hvsim.widgets import render as R
from hvsim.widgets.controller import StepperController, vmx_mode
from hvsim.viz import record


def _hypervisor_machine(guest="xor eax, eax\ncpuid\nmov ebx, 7\nvmcall\n"):
    vmm, g = hypervisor(guest)
    m = Machine(memory=4 << 20)
    m.load(vmm)
    m.write_physical(g.origin, g.code)
    return m, vmm


def test_the_ring_indicator_lights_ring_minus_one_in_vmx_root():
    off, root, guest = R.rings_svg(0), R.rings_svg(0, "root"), R.rings_svg(3, "non-root")
    assert 'data-vmx="off"' in off and "stroke-dasharray" in off
    assert 'data-vmx="root"' in root and 'data-ring="-1" class="hvsim-ring hvsim-lit"' in root
    assert 'data-ring="0" class="hvsim-ring hvsim-lit"' not in root   # CPL 0, but ring -1
    assert 'data-ring="3" class="hvsim-ring hvsim-lit"' in guest
    assert 'data-ring="-1" class="hvsim-ring"' in guest and "VMX non-root" in guest
    with pytest.raises(ValueError, match="vmx must be"):
        R.rings_svg(0, "ring -1")


def test_the_stepper_logs_vm_entries_and_exits_of_an_assembly_hypervisor():
    m, vmm = _hypervisor_machine()
    st = StepperController(m)
    st.run(10_000)
    rows = [r.text() for r in st.trap_log]
    entry = next(i for i, t in enumerate(rows) if "VM entry (VMLAUNCH)" in t)
    cpuid = next(i for i, t in enumerate(rows) if "VM exit 10 (CPUID)" in t)
    resume = next(i for i, t in enumerate(rows) if "VM entry (VMRESUME)" in t)
    vmcall = next(i for i, t in enumerate(rows) if "VM exit 18 (VMCALL)" in t)
    assert entry < cpuid < resume < vmcall
    assert "hypervisor (ring -1, VMX root)" in rows[cpuid]
    # the run ended on the hypervisor's HLT, in root operation
    assert vmx_mode(m) == "root" and "ring: -1 (VMX root operation" in st.render_text()
    assert 'data-vmx="root"' in st.view().rings_html


def test_the_timeline_draws_ring_minus_one():
    m, vmm = _hypervisor_machine()
    rec = record(m, 20_000)          # the page directory loop comes first: ~7200 steps
    cpls = set(int(c) for c in rec.cpl)
    assert -1 in cpls and 0 in cpls                      # the hypervisor, then its guest
    assert rec.marker_kinds.count("vm_exit") == 2        # CPUID, VMCALL
    assert rec.marker_kinds.count("vm_entry") == 2       # VMLAUNCH, VMRESUME
    assert rec.final is not None and rec.final.kind == "halt"


def test_the_stepper_drives_the_vtx_monitor():
    mon = Vtx(program=teaching_kernel(KCODE=0x08))
    st = StepperController(mon)
    st.run(3000)
    rows = [r.text() for r in st.trap_log]
    assert any("VM exit 30 IO_INSTRUCTION" in t for t in rows)      # the VMM's own log
    assert any("VM entry (VMLAUNCH)" in t for t in rows)             # the hardware's
    assert st.console.startswith("kernel up")
