"""Whether this kernel lets a program attach at a function's entry through a
BPF trampoline (fentry), asked of the kernel itself: an empty program is
loaded and attached, then closed at once.

fentry needs the kernel's BTF (the function's type), trampolines for the
architecture and a kernel that permits BPF_PROG_TYPE_TRACING: this machine's
6.18 has BTF but answers EPERM, Debian's 5.10, 6.1 and 6.12 allow it. BCC
attaches a `kfunc__` program as it loads the whole object and fails the
load if it cannot, so the agent asks first, with the bpf(2) system call
itself (no compiler), and compiles the fentry program in only when the
answer is yes; otherwise the kprobe does the same work.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct

# include/uapi/linux/bpf.h
_BPF_PROG_LOAD = 5
_BPF_RAW_TRACEPOINT_OPEN = 17
_BPF_PROG_TYPE_TRACING = 26
_BPF_TRACE_FENTRY = 24
_NR_BPF = {"x86_64": 321, "aarch64": 280}
# r0 = 0; exit
_RETURN_ZERO = struct.pack("<BBhi", 0xB7, 0, 0, 0) + struct.pack("<BBhi", 0x95, 0, 0, 0)

_libc = ctypes.CDLL(None, use_errno=True)


def _bpf(cmd: int, attr: ctypes.Array[ctypes.c_char]) -> int:
    nr = _NR_BPF.get(platform.machine())
    if nr is None:
        raise OSError(errno.ENOSYS, f"no bpf(2) number known for {platform.machine()}")
    fd = int(_libc.syscall(nr, cmd, ctypes.byref(attr), ctypes.sizeof(attr)))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return fd


def fentry_allowed(function: str, btf_id: int) -> tuple[bool, str]:
    """(True, "") when an fentry program can be attached to `function` (its
    BTF type id `btf_id`, 0: not in the BTF) here; else False and why, as
    the kernel said it."""
    if not btf_id:
        return False, f"{function} is not in the kernel's BTF (inlined, or no BTF for it)"
    insns = ctypes.create_string_buffer(_RETURN_ZERO)
    license_ = ctypes.create_string_buffer(b"GPL")
    # union bpf_attr for BPF_PROG_LOAD, up to attach_btf_id (offset 108).
    load = ctypes.create_string_buffer(128)
    struct.pack_into(
        "<IIQQ",
        load,
        0,
        _BPF_PROG_TYPE_TRACING,
        2,
        ctypes.addressof(insns),
        ctypes.addressof(license_),
    )
    struct.pack_into("<I", load, 68, _BPF_TRACE_FENTRY)  # expected_attach_type
    struct.pack_into("<I", load, 108, btf_id)  # attach_btf_id
    try:
        prog = _bpf(_BPF_PROG_LOAD, load)
    except OSError as exc:
        return False, f"the kernel refused an fentry program on {function}: {exc.strerror}"
    try:
        # BPF_RAW_TRACEPOINT_OPEN with no name attaches a tracing program
        # where its attach_btf_id says; closing the link detaches it.
        attach = ctypes.create_string_buffer(16)
        struct.pack_into("<QI", attach, 0, 0, prog)
        try:
            link = _bpf(_BPF_RAW_TRACEPOINT_OPEN, attach)
        except OSError as exc:
            return False, f"an fentry program could not attach to {function}: {exc.strerror}"
        os.close(link)
    finally:
        os.close(prog)
    return True, ""
