"""Records built from what the agent knows: live kills (live.py, from an
AssembledKill), kills known only from the kernel's log or its counters
(logged.py), and pressure windows (pressure.py). They share parts.py: the
one id function, the container/pod filler, the constraint map and the kernel
report. Builders copy; they work nothing out (see ../assembly.py)."""
