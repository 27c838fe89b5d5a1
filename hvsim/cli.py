"""The ``hvsim`` command line (Python face only; nothing here is jitted).

::

    hvsim run prog.s [--monitor none|native|trap-and-emulate|vtx|pv|emulate|dbt|bt|rawmode]
                     [--max-steps N]
                     [--memory BYTES] [--timer N] [--exceptions host|guest] [--trace]
                     [-D NAME[=VALUE]]...
    hvsim compare GUEST [--hosts a,b,...] [--profile P] [--budget N]
                        [--set NAME=VALUE]... [--json]
    hvsim disasm FILE [--origin N] [-D NAME]   # FILE: raw machine code, or a .s source
    hvsim warmup                        # compile every kernel into numba's disk cache
    hvsim version

``run`` assembles the file, runs it on a bare :class:`hvsim.Machine` until the first
event, and prints what a student wants to see: the console output, the event, the
final registers (EFLAGS decoded, CPL) and every counter that moved. With ``--monitor``
the program is a guest kernel run under that technique's monitor
(:data:`hvsim.techniques.MONITORS`): the output adds the monitor's own counts, and
``--trace`` prints its log (every trap it handled and what it did). ``-D NAME`` defines a
name for the source's ``%ifdef`` (hvsim/asm/preprocess.py): ``-D PV`` builds a kernel's
paravirtualized variant, for ``--monitor pv``.

``compare`` runs one guest -- the teaching kernel, an mm.s or a minios.s workload -- on
every host that can run it (or those of ``--hosts``; native always, first, as the
reference) and prints :class:`hvsim.compare.Comparison`'s table: per host how the run
ended, whether the guest saw the same as natively, what the host did (traps, VM exits,
hypercalls, callouts...) and the cycles on ``--profile`` (``--json``: the rows as JSON).
``--set NAME=VALUE`` sets a guest's parameter (mm.s's ITER=1000, minios.s's
N_SYSCALLS=8, the kernel's steps=20000 or PERIOD=300).

Exit status of ``run``: 0 when the guest halted, 1 for any other final event (an
exception routed to the host, an unclaimed I/O port, the step budget, a shutdown...).
Of ``compare``: 0 when every host's run finished and is the same as native's, 1 when a
host's differs or did not finish -- the teaching kernel under trap-and-emulate gives 1,
its frozen clock: that is what the comparison is there to show. Any command: 2 for bad
input (bad arguments, a missing file, an assembly error, an unknown guest, host,
parameter or profile). Errors are one clear message on stderr, never a traceback.
"""
from __future__ import annotations

import argparse
import os
import sys
import textwrap

#: Exit statuses (documented above and in ``hvsim --help``).
EXIT_HALT = 0
EXIT_OTHER_EVENT = 1
EXIT_BAD_INPUT = 2
EXIT_AGREE = 0                      # compare: every host the same as native
EXIT_DIFFER = 1                     # compare: a host differs or did not finish

DEFAULT_MAX_STEPS = 10_000_000
MAX_STEPS = 1 << 62                 # Machine.run's largest budget
MAX_TIMER = 0xFFFFFFFF              # Machine.set_timer's longest period
# Machine.__init__'s memory sizes (hvsim/machine.py), checked here to name them in full
PAGE = 4096
MIN_MEMORY = 64 << 10
MAX_MEMORY = 1 << 30

_REGISTERS = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")


class _BadInput(Exception):
    """A user error to report in one line (status 2)."""


# --- argument types: each turns a string into a value or says clearly why not ----------

def _int_literal(text: str) -> int:
    """Parse 123, 0x7b, 0o173, 0b1111011, 1_000 and the suffixes K, M, G (powers of 1024)."""
    s = text.strip().replace("_", "")
    scale = 1
    if s[-1:].upper() in ("K", "M", "G"):      # none of them is a hex digit
        scale = 1024 ** ("KMG".index(s[-1].upper()) + 1)
        s = s[:-1]
    return int(s, 0) * scale


def _positive_int(top: int):
    """An argument type for an integer from 1 to ``top``."""
    def positive_int(text: str) -> int:
        try:
            value = _int_literal(text)
        except ValueError:
            value = 0
        if not 1 <= value <= top:
            raise argparse.ArgumentTypeError(
                f"expected a positive integer up to {top:,}, got {text!r}")
        return value
    return positive_int


def _size_text(n: int) -> str:
    """``100000 bytes (0x186a0, 97.66 KiB)``: a size in decimal, hex and the largest unit."""
    text = f"{n} bytes ({n:#x}"
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if abs(n) >= 1 << shift:
            text += f", {n / (1 << shift):.4g} {unit}"
            break
    return text + ")"


_MEMORY_RULE = (f"a multiple of {PAGE} bytes from {MIN_MEMORY} (64 KiB) "
                f"to {MAX_MEMORY} (1 GiB)")


def _memory_size(text: str) -> int:
    try:
        value = _int_literal(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a size in bytes such as 16M or 0x100000, got {text!r}") from None
    if value < MIN_MEMORY:
        wrong = "less than 64 KiB"
    elif value > MAX_MEMORY:
        wrong = "more than 1 GiB"
    elif value % PAGE:
        wrong = f"not a multiple of {PAGE}"
    else:
        return value
    raise argparse.ArgumentTypeError(f"{_size_text(value)} is {wrong}: the memory size "
                                     f"must be {_MEMORY_RULE}")


def _address(text: str) -> int:
    try:
        value = _int_literal(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an address such as 0x1000, got {text!r}") from None
    if not 0 <= value <= 0xFFFFFFFF:
        raise argparse.ArgumentTypeError(f"address {text!r} is outside the 32-bit space")
    return value


def _monitor_names():
    from hvsim.techniques import MONITORS
    return MONITORS


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hvsim",
        description="hvsim: an educational x86 virtualization simulator.",
        epilog="exit status: run: 0 = guest halted, 1 = another final event; compare: "
               "0 = every host the same as native, 1 = a host differs or did not finish; "
               "2 = bad input",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    run = sub.add_parser("run", help="assemble a .s file and run it until the first event",
                         description="Assemble FILE, run it on a bare machine (32-bit protected "
                         "mode, flat segments, ring 0, paging off) and print the result.")
    run.add_argument("file", metavar="FILE", help="assembly source (Intel syntax)")
    run.add_argument("--max-steps", type=_positive_int(MAX_STEPS), default=DEFAULT_MAX_STEPS,
                     metavar="N", help=f"instruction budget (default {DEFAULT_MAX_STEPS:,})")
    run.add_argument("--memory", type=_memory_size, default=None, metavar="BYTES",
                     help="guest-physical memory size, e.g. 16M or 0x100000: "
                     f"{_MEMORY_RULE} (default: the Machine's)")
    run.add_argument("--timer", type=_positive_int(MAX_TIMER), default=None, metavar="N",
                     help="raise a timer interrupt every N instructions (default: no timer)")
    run.add_argument("--monitor", choices=("none",) + tuple(_monitor_names()), default="none",
                     help="run the program as a guest kernel under this technique's monitor "
                     "(default: none, the bare machine)")
    run.add_argument("--exceptions", choices=("host", "guest"), default=None,
                     help="bare machine only: deliver exceptions to the host (default) or "
                     "through the guest IDT")
    run.add_argument("--trace", action="store_true", help="print the event trace after the run")
    run.add_argument("-D", "--define", type=_define, action="append", default=[],
                     metavar="NAME[=VALUE]", help="define NAME for the source's %%ifdef / "
                     "%%define (e.g. -D PV builds a kernel's paravirtualized variant); repeatable")

    _add_compare(sub)

    dis = sub.add_parser("disasm", help="disassemble raw machine code or a .s file",
                         description="Disassemble FILE: raw machine code, or an assembly source "
                         "(.s/.S/.asm) that is assembled first.")
    dis.add_argument("file", metavar="FILE")
    dis.add_argument("--origin", type=_address, default=None, metavar="N",
                     help="address of the first byte (default: the program's origin, or 0)")
    dis.add_argument("-D", "--define", type=_define, action="append", default=[],
                     metavar="NAME[=VALUE]", help="define NAME for a .s file's %%ifdef")

    sub.add_parser("warmup", help="compile every kernel into numba's on-disk cache")
    sub.add_parser("version", help="print the versions of hvsim, numba, numpy and Python")
    return parser


# --- helpers ------------------------------------------------------------------------------

def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        raise _BadInput(f"{path}: no such file") from None
    except IsADirectoryError:
        raise _BadInput(f"{path}: is a directory, not a file") from None
    except UnicodeDecodeError:
        raise _BadInput(f"{path}: not a text file (is it raw machine code? try 'hvsim disasm')") from None
    except OSError as e:
        raise _BadInput(f"{path}: {e.strerror}") from None


def _add_compare(sub) -> None:
    """The ``compare`` subcommand; its help lists the guests and each one's hosts."""
    from hvsim import compare as C
    from hvsim.guests import MINIOS_PARAMS, MM_PARAMS
    from hvsim.kernelhosts import PARAMS, STEPS
    kernel, mm, mini = (C.hosts_of(g) for g in ("kernel", "mm:mixed", "minios:all"))
    paragraphs = (
        f"guests: {', '.join(C.GUESTS)} (an mm workload may go without 'mm:').",
        f"hosts: kernel: {', '.join(kernel)}; mm: {', '.join(mm)}; minios: "
        f"{', '.join(mini)}.",
        f"parameters (--set): the kernel: steps (default {STEPS:,}; its --budget), "
        f"{', '.join(PARAMS)}; mm: {', '.join(MM_PARAMS)}; minios: "
        f"{', '.join(MINIOS_PARAMS)}.",
        f"exit status: {EXIT_AGREE} = every host finished and is the same as native; "
        f"{EXIT_DIFFER} = a host differs or did not finish (the kernel under "
        f"trap-and-emulate: its clock freezes, the point of the comparison); "
        f"{EXIT_BAD_INPUT} = bad input.")
    cmp = sub.add_parser(
        "compare", help="run one guest on every technique and compare each run with native",
        description=textwrap.fill(
            "Run GUEST on every host that can run it (native first, as the reference), "
            "compare what the guest saw with native's, and print per host how it ended, "
            "its traps, VM exits, hypercalls, callouts, and its cycles on a CPU "
            "generation's cost profile.", 78),
        epilog="\n".join(textwrap.fill(p, 78, subsequent_indent="  ") for p in paragraphs),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    cmp.add_argument("guest", metavar="GUEST", help="kernel, an mm workload (mixed, "
                     "mm:fork...) or a minios workload (minios:syscall...)")
    cmp.add_argument("--hosts", default=None, metavar="a,b,...",
                     help="the hosts to run (default: every host of the guest); native "
                     "runs anyway")
    cmp.add_argument("--profile", default="nehalem", metavar="P",
                     help="the cost profile: prescott, merom, nehalem (default), sandy_bridge")
    cmp.add_argument("--budget", type=_positive_int(MAX_STEPS), default=None, metavar="N",
                     help="steps each run may take (default: 2,000,000 for a workload; for "
                     "the kernel, its steps)")
    cmp.add_argument("--set", dest="params", type=_setting, action="append", default=[],
                     metavar="NAME=VALUE", help="set a guest parameter; repeatable")
    cmp.add_argument("--json", action="store_true", help="print the rows as JSON")


def _setting(text: str):
    """``NAME=VALUE`` (VALUE an integer literal): a guest parameter for ``compare``."""
    name, eq, value = text.partition("=")
    name = name.strip()
    if not eq or not name.isidentifier():
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=VALUE, such as ITER=1000")
    try:
        return name, _int_literal(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: the value after = must be an integer "
                                         "(123, 0x7b, 1_000, 64K)") from None


def _define(text: str):
    """``NAME`` or ``NAME=VALUE`` (an integer literal) for the assembler's %ifdef/%define."""
    name, eq, value = text.partition("=")
    name = name.strip()
    if not name.isidentifier():
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME or NAME=VALUE, NAME a word "
                                         "such as PV")
    if not eq:
        return name, None
    try:
        return name, _int_literal(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: the value after = must be an integer "
                                         "(123, 0x7b)") from None


def _assemble_file(path: str, defines=()):
    from hvsim import AsmError, assemble
    source = _read_text(path)
    try:
        return assemble(source, defines=dict(defines or ()))
    except AsmError as exc:           # its text names the line and column, with a caret
        raise _BadInput(f"{path}: {exc}") from None


def _assemble_code(path: str, defines=()):
    """The assembled program of ``path``, which must have at least one byte of code."""
    prog = _assemble_file(path, defines)
    if not prog.code:
        raise _BadInput(f"{path}: the program is empty: it assembles to no code bytes "
                        "(only comments, labels or blank lines?)")
    return prog


def _eflags_text(value: int) -> str:
    from hvsim.arch.flags import Flag, iopl
    names = [f.name for f in Flag if value & f.value]
    names.append(f"IOPL={iopl(value)}")
    return f"eflags=0x{value:08x} [{' '.join(names)}]"


def _event_text(ev) -> str:
    """``event: exception #GP (general protection) error_code=0x0 at eip=... cpl=3 after N steps``."""
    parts = [f"event: {ev.kind}"]
    if ev.kind in ("exception", "interrupt") and ev.vector is not None:
        from hvsim.arch.vectors import vector_name
        parts.append(vector_name(ev.vector))
        if ev.error_code is not None:
            parts.append(f"error_code=0x{ev.error_code:x}")
    if ev.kind == "io":
        parts.append(f"{ev.direction} port=0x{ev.port:x} size={ev.size}")
        if ev.direction == "out":
            parts.append(f"value=0x{ev.value:x}")
    if ev.address is not None:
        parts.append(f"address=0x{ev.address:08x}")
    parts.append(f"at eip=0x{ev.eip:08x} cpl={ev.cpl} after {ev.steps} step" + ("" if ev.steps == 1 else "s"))
    return " ".join(parts)


def _print_machine(m, ev, out, console: bool = True) -> None:
    cpu = m.cpu
    console = m.console if console else ""
    if console:
        print("--- console ---", file=out)
        print(console, end="" if console.endswith("\n") else "\n", file=out)
        print("---------------", file=out)
    print(_event_text(ev), file=out)
    for name in _REGISTERS:
        value = int(getattr(cpu, name))
        signed = value - (1 << 32) if value & 0x80000000 else value
        print(f"{name}=0x{value:08x} ({value}" + (f" / {signed}" if signed < 0 else "") + ")", file=out)
    print(f"eip=0x{int(cpu.eip):08x}", file=out)
    print(_eflags_text(int(cpu.eflags)), file=out)
    print(f"cpl={cpu.cpl}", file=out)
    moved = [(k, int(v)) for k, v in m.counters.to_dict(nonzero=True).items()]
    if moved:
        print("counters:", file=out)
        width = max(len(k) for k, _ in moved)
        for k, v in moved:
            print(f"  {k:<{width}}  {v}", file=out)


def _print_trace(m, out) -> None:
    entries = m.trace
    print("--- trace (recent events, oldest first) ---", file=out)
    if not entries:
        print("(empty)", file=out)
    for entry in entries:
        print(entry, file=out)


# --- commands -----------------------------------------------------------------------------

def _cmd_run(args, out) -> int:
    prog = _assemble_code(args.file, args.define)
    if args.monitor != "none":
        return _run_monitor(args, prog, out)
    from hvsim import Machine
    kwargs = {"exceptions": args.exceptions or "host"}
    if args.memory is not None:
        kwargs["memory"] = args.memory
    if args.timer is not None:
        kwargs["timer"] = args.timer
    try:
        m = Machine(**kwargs)
    except ValueError as e:           # the face validates sizes and options
        raise _BadInput(f"cannot build the machine: {e}") from None
    try:
        m.load(prog)
    except ValueError as e:
        raise _BadInput(_load_error(args.file, m, e)) from None
    ev = m.run(max_steps=args.max_steps)
    _print_machine(m, ev, out)
    if args.trace:
        _print_trace(m, out)
    return EXIT_HALT if ev.kind == "halt" else EXIT_OTHER_EVENT


def _load_error(path, m, e) -> str:
    """Why the program does not load into machine ``m``, with the memory size in full."""
    return (f"{path}: cannot load the program into {_size_text(len(m.memory))} of memory "
            f"(--memory): {e}")


def _run_monitor(args, prog, out) -> int:
    """``hvsim run --monitor NAME``: the program is the guest kernel of that monitor."""
    from hvsim import Machine
    from hvsim.monitors import Native
    from hvsim.techniques import MONITORS
    if args.exceptions is not None:
        raise _BadInput(f"--exceptions is for the bare machine: the {args.monitor} monitor "
                        "decides where every vector goes")
    if args.timer is not None and args.monitor != "native":
        raise _BadInput(f"--timer is for the bare machine: under {args.monitor} the guest "
                        "programs its own (virtual) timer on ports 0x40/0x41")
    kwargs = {"memory": args.memory if args.memory is not None else 1 << 20}
    if args.monitor == "native":
        kwargs["exceptions"] = "guest"
        if args.timer is not None:
            kwargs["timer"] = args.timer
    elif args.monitor in ("emulate", "dbt"):      # the emulated guest owns its IDT; the
        from hvsim.emulation.monitor import TLB_GEOMETRY   # soft TLB has the emulator's size
        kwargs["exceptions"] = "guest"
        kwargs["tlb"] = TLB_GEOMETRY["interpret" if args.monitor == "emulate" else "translate"]
    try:
        m = Machine(**kwargs)
    except ValueError as e:
        raise _BadInput(f"cannot build the machine: {e}") from None
    try:
        mon = MONITORS[args.monitor](machine=m) if args.monitor != "native" else Native(m)
    except ValueError as e:           # its layout needs more (or less) memory
        raise _BadInput(f"--memory {_size_text(kwargs['memory'])} does not suit the "
                        f"{args.monitor} monitor: {e} (its default, 1 MiB, does)") from None
    try:
        if args.monitor == "native":
            m.load(prog)
        else:
            mon.boot(prog)
    except ValueError as e:
        if args.monitor == "native":
            raise _BadInput(_load_error(args.file, m, e)) from None
        raise _BadInput(f"{args.file}: cannot load the program: {e}") from None
    ev = mon.run(args.max_steps)
    console = mon.console
    if console:
        print("--- console ---", file=out)
        print(console, end="" if console.endswith("\n") else "\n", file=out)
        print("---------------", file=out)
    reason = getattr(ev, "reason", "")
    print(f"monitor: {args.monitor}, guest {mon.state}" + (f" ({reason})" if reason else ""),
          file=out)
    _print_machine(m, ev, out, console=False)
    stats = {k: v for k, v in mon.stats.items() if v}
    if stats:
        print("monitor counts:", file=out)
        width = max(len(k) for k in stats)
        for k, v in stats.items():
            print(f"  {k:<{width}}  {v}", file=out)
    if args.trace:
        print(f"--- monitor log ({len(mon.log)} entries, oldest first) ---", file=out)
        for entry in mon.log:
            print(entry, file=out)
    return EXIT_HALT if ev.kind == "halt" else EXIT_OTHER_EVENT


def _cmd_compare(args, out) -> int:
    from hvsim.compare import plan
    params = {}
    for name, value in args.params:
        if name in params:
            raise _BadInput(f"--set {name} is given twice ({params[name]} and {value})")
        params[name] = value
    try:
        p = plan(args.guest, args.hosts, profile=args.profile, budget=args.budget, **params)
    except (ValueError, TypeError) as e:     # every input is checked before anything runs
        raise _BadInput(str(e)) from None
    c = p.run()
    print(c.to_json() if args.json else c.table(), file=out)
    return EXIT_AGREE if c.agree else EXIT_DIFFER


_ASM_SUFFIXES = (".s", ".S", ".asm")


def _cmd_disasm(args, out) -> int:
    from hvsim import disassemble
    if args.file.endswith(_ASM_SUFFIXES):
        prog = _assemble_code(args.file, args.define)
        code = bytes(prog.code)
        origin = prog.origin if args.origin is None else args.origin
    else:
        try:
            with open(args.file, "rb") as f:
                code = f.read()
        except FileNotFoundError:
            raise _BadInput(f"{args.file}: no such file") from None
        except IsADirectoryError:
            raise _BadInput(f"{args.file}: is a directory, not a file") from None
        except OSError as e:
            raise _BadInput(f"{args.file}: {e.strerror}") from None
        if not code:
            raise _BadInput(f"{args.file}: the file is empty: no bytes to disassemble")
        origin = 0 if args.origin is None else args.origin
    for insn in disassemble(code, origin):
        print(_insn_text(insn), file=out)
    return 0


def _insn_text(insn) -> str:
    """``00001000  b9 0a 00 00 00        mov ecx, 0xa`` (address, bytes, Intel syntax)."""
    raw = bytes(insn.bytes).hex(" ")
    text = f"{insn.mnemonic} {insn.op_str}".strip()
    return f"{int(insn.address):08x}  {raw:<21} {text}"


def _cmd_warmup(args, out) -> int:
    from hvsim.warmup import warmup

    def progress(line):
        print(f"hvsim warmup: {line}", file=sys.stderr, flush=True)
    print("hvsim warmup: compiling every kernel into numba's disk cache: a minute or two "
          "from an empty cache, a few seconds from a full one", file=sys.stderr, flush=True)
    seconds = warmup(progress)
    cache = os.environ.get("NUMBA_CACHE_DIR", "next to the sources (__pycache__)")
    print(f"hvsim warmup: kernels compiled/loaded in {seconds:.2f} s (numba cache: {cache})", file=out)
    return 0


def _version() -> str:
    try:
        from importlib.metadata import version
        return version("hvsim")
    except Exception:
        import hvsim
        return getattr(hvsim, "__version__", "unknown")


def _cmd_version(args, out) -> int:
    import numba
    import numpy
    print(f"hvsim {_version()}", file=out)
    print(f"numba {numba.__version__}, numpy {numpy.__version__}, "
          f"Python {sys.version.split()[0]}", file=out)
    return 0


_COMMANDS = {"run": _cmd_run, "compare": _cmd_compare, "disasm": _cmd_disasm, "warmup": _cmd_warmup, "version": _cmd_version}


def main(argv=None) -> int:
    """Entry point of the ``hvsim`` console script; returns the exit status."""
    parser = _build_parser()
    args = parser.parse_args(argv)      # bad arguments: usage + message, status 2
    try:
        return _COMMANDS[args.command](args, sys.stdout)
    except _BadInput as e:
        print(f"hvsim {args.command}: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("hvsim: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:            # e.g. `hvsim run prog.s | head`: the reader left
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OTHER_EVENT


if __name__ == "__main__":
    sys.exit(main())
