"""The kernel side, seen from user space.

bcc_loader.py  the one module that imports BCC: compile, attach, poll, loss counters
btf.py         a reader for the running kernel's BTF
layout.py      kernel struct layouts and hook shapes from BTF, as -D constants
fentry.py      whether this kernel can attach fentry programs (asked of the kernel)
decode.py      hop one: a bpf/oomtrace.h event to a typed kernel record
oom_caller.py  where the OOM killer was called from (the trigger's kernel stack)
"""
