"""bench/elf.py: the hand-written ELF32 executable that times a benchmark loop under QEMU
user mode (bench/run.py's QEMU column). Oracles: the ELF header layout of the System V
gABI, read back with struct; and qemu-i386 itself, when installed, whose exit status is
the loop's EAX (skipped with the reason when it is absent)."""
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import elf  # noqa: E402  (bench/elf.py)
import run as bench_run  # noqa: E402  (bench/run.py: the loops' assembly text)

QEMU = shutil.which("qemu-i386")
needs_qemu = pytest.mark.skipif(
    QEMU is None, reason="qemu-i386 not installed (Debian: apt-get install qemu-user)")


def test_headers_describe_one_rwx_load_segment_with_zeroed_tail():
    code = bytes([0x90] * 10)
    blob = elf.build_elf(code, bss=0x2000)
    assert blob[:7] == b"\x7fELF\x01\x01\x01"                  # ELF32, little-endian, v1
    e_type, e_machine, _, e_entry, e_phoff, e_shoff, _, _, e_phentsize, e_phnum = \
        struct.unpack_from("<HHIIIIIHHH", blob, 16)
    assert (e_type, e_machine, e_entry, e_phoff, e_shoff) == (2, 3, elf.CODE_VADDR, 52, 0)
    assert (e_phentsize, e_phnum) == (32, 1)
    p_type, p_offset, p_vaddr, _, p_filesz, p_memsz, p_flags, p_align = \
        struct.unpack_from("<8I", blob, 52)
    assert (p_type, p_offset, p_vaddr, p_flags, p_align) == (1, 0, elf.BASE, 7, 0x1000)
    assert p_filesz == len(blob) == elf.CODE_OFFSET + 10
    assert p_memsz == p_filesz + 0x2000
    assert blob[elf.CODE_OFFSET:] == code


def test_mixed_loop_data_and_stack_are_in_the_zeroed_memory_off_the_code_page():
    blob = elf.loop_executable(bench_run.MIXED_LOOP, 5)
    code = blob[elf.CODE_OFFSET:]
    # mov esp, imm32 (BC id) and mov ebx, imm32 (BB id) open the loop
    assert code[0] == 0xBC and code[5] == 0xBB
    esp, ebx = struct.unpack_from("<I", code, 1)[0], struct.unpack_from("<I", code, 6)[0]
    first, end = elf.bss_range(len(code))
    assert ebx == first and ebx % 0x1000 == 0 and ebx > elf.CODE_VADDR + len(code)
    assert first < esp <= end and esp % 16 == 0


def _run(tmp_path, template, n):
    path = tmp_path / "loop"
    path.write_bytes(elf.loop_executable(template, n))
    path.chmod(0o755)
    return subprocess.run([QEMU, str(path)], capture_output=True, timeout=60).returncode


@needs_qemu
@pytest.mark.parametrize("n", [1, 1000, 12345])
def test_alu_loop_exits_with_the_low_byte_of_its_sum(tmp_path, n):
    # EAX accumulates ECX = n, n-1, ..., 1
    assert _run(tmp_path, bench_run.ALU_LOOP, n) == (n * (n + 1) // 2) & 0xFF


@needs_qemu
def test_mixed_loop_exits_with_its_last_load_plus_ecx(tmp_path):
    # the last iteration: EAX = [data] (zeroed memory, never written) + ECX (1)
    assert _run(tmp_path, bench_run.MIXED_LOOP, 1000) == 1
