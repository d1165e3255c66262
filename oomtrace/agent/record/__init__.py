"""One kill, one record: the facts are worked out once (assembler.py), and
the builders only copy them.

assembler.py      holds a kill until its victim is gone and works out every fact
breakdown.py      where the memory was: the limited cgroup, split at the kill
memcg_files.py    what the cgroup's own files say, where the report cannot
allocation.py     what was being allocated when the limit was hit
node_memory.py    a node-wide OOM: the kernel's Mem-Info block
parts.py          what every builder shares: the id, the container/pod filler
live.py           an assembled kill becomes an oomtrace.v1.OomEvent
logged.py         kills known only from the kernel's log or its counters
runtime_death.py  a runtime's own OOM death (source RUNTIME)
pressure_window.py a pressure window becomes an oomtrace.v1.PressureRecord"""
