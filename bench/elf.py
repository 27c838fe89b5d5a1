"""A tiny static ELF32 i386 executable written by hand, for timing loops under QEMU user
mode (``qemu-i386``) beside hvsim (Python; not jitted; used by bench/run.py).

No toolchain: the file is an ELF header, one program header and the machine code, which
hvsim's own assembler produces at the address the loader will put it. The one PT_LOAD
segment maps the whole file read/write/execute at :data:`BASE` and extends it with
zeroed memory (``p_memsz > p_filesz``, as a .bss): the mixed loop keeps its data and its
stack there, since the addresses it uses on a bare hvsim machine are not mapped in a
Linux process.

    file offset 0      ELF header (52 bytes)              System V gABI, "ELF Header";
                52     program header: PT_LOAD (32 bytes)  i386 psABI
                CODE_OFFSET  the code; entry point = its first byte
    memory      BASE .. BASE + file size            the file, as loaded
                     .. BASE + file size + bss      zeroes (data, then the stack at the top)

A benchmark loop ends in ``done: hlt``; here the HLT becomes the Linux exit system call
(``int 0x80`` with EAX = 1, SYS_exit on i386), whose status is the low byte of EAX at the
end of the loop: a caller can check it to know the loop really ran its N iterations.

>>> blob = build_elf(b"\\xb8\\x01\\x00\\x00\\x00\\xcd\\x80")   # mov eax, 1 ; int 0x80
>>> blob[:4], len(blob) == CODE_OFFSET + 7
(b'\\x7fELF', True)
"""
from __future__ import annotations

import struct

BASE = 0x0804_8000          # the traditional i386 load address, above QEMU's low guard
CODE_OFFSET = 0x80          # the code starts here in the file (after the two headers)
CODE_VADDR = BASE + CODE_OFFSET
BSS_SIZE = 0x1_0000         # zeroed memory after the file: data at its start, stack at its top

# ELF constants (System V gABI; i386 psABI)
ELFCLASS32, ELFDATA2LSB, EV_CURRENT = 1, 1, 1
ET_EXEC, EM_386 = 2, 3
PT_LOAD = 1
PF_X, PF_W, PF_R = 1, 2, 4
EHDR_SIZE, PHDR_SIZE = 52, 32
PAGE = 0x1000

# Linux i386 system call: exit (arch/x86/entry/syscalls/syscall_32.tbl)
EXIT_SEQUENCE = """
    mov ebx, eax
    mov eax, 1
    int 0x80
"""


def build_elf(code: bytes, bss: int = BSS_SIZE) -> bytes:
    """The executable: ``code`` at :data:`CODE_VADDR` (also the entry point), then ``bss``
    bytes of zeroed read/write memory."""
    filesz = CODE_OFFSET + len(code)
    ident = b"\x7fELF" + bytes([ELFCLASS32, ELFDATA2LSB, EV_CURRENT]) + bytes(9)
    ehdr = ident + struct.pack(
        "<HHIIIIIHHHHHH",
        ET_EXEC, EM_386, EV_CURRENT,
        CODE_VADDR,                 # e_entry
        EHDR_SIZE,                  # e_phoff: the program header follows the ELF header
        0,                          # e_shoff: no section headers
        0,                          # e_flags
        EHDR_SIZE, PHDR_SIZE, 1,    # e_ehsize, e_phentsize, e_phnum
        0, 0, 0)                    # e_shentsize, e_shnum, e_shstrndx
    phdr = struct.pack(
        "<IIIIIIII",
        PT_LOAD,
        0,                          # p_offset: map the file from its first byte
        BASE, BASE,                 # p_vaddr, p_paddr
        filesz,                     # p_filesz
        filesz + bss,               # p_memsz: the rest is zero-filled
        PF_R | PF_W | PF_X,
        PAGE)                       # p_align
    head = ehdr + phdr
    assert len(head) <= CODE_OFFSET
    return head + bytes(CODE_OFFSET - len(head)) + bytes(code)


def bss_range(code_len: int, bss: int = BSS_SIZE) -> tuple[int, int]:
    """(first, end) virtual addresses of the zeroed memory after ``code_len`` bytes of code,
    the first rounded up to the next page: QEMU (like a real CPU) watches pages holding
    translated code for writes, and a store to the code's own page would discard the
    loop's translation on every iteration."""
    first = (CODE_VADDR + code_len + PAGE - 1) & ~(PAGE - 1)
    end = CODE_VADDR + code_len + bss
    assert end - first >= PAGE, "the zeroed memory must reach past the code's page"
    return first, end


def loop_executable(template: str, n: int) -> bytes:
    """A benchmark loop (bench/run.py's assembly text, ``{n}`` the iteration count) as an
    ELF for qemu-i386: the same instructions between the setup and ``done:``, with

    * ``hlt`` at ``done:`` replaced by :data:`EXIT_SEQUENCE` (exit status = AL);
    * ``mov esp, 0x90000`` / ``mov ebx, 0x80000`` (addresses of the bare machine) pointed
      at the top and the start of the ELF's zeroed memory instead.
    """
    from hvsim import assemble
    source = template.format(n=n)
    if "done:\n    hlt\n" not in source:
        raise ValueError("the loop must end in 'done:' followed by 'hlt'")
    source = source.replace("done:\n    hlt\n", "done:" + EXIT_SEQUENCE, 1)
    # the code's length does not depend on the addresses below (mov r32, imm32 is 5 bytes)
    size = len(assemble(source.replace("0x90000", "0").replace("0x80000", "0"),
                        origin=CODE_VADDR).code)
    data, stack_top = bss_range(size)
    source = (source.replace("mov esp, 0x90000", f"mov esp, {stack_top & ~15:#x}")
                    .replace("mov ebx, 0x80000", f"mov ebx, {data:#x}"))
    prog = assemble(source, origin=CODE_VADDR)
    if prog.entry != CODE_VADDR:
        raise ValueError(f"the loop's entry {prog.entry:#x} is not its first byte")
    return build_elf(bytes(prog.code))
