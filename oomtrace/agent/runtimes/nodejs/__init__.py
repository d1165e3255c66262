"""Node.js: which processes are Node and what version (discovery), its V8
heap flags and the heap limit in force, the flag's or the one V8 derives
from the memory it is given, measured rule included (settings), the
record's `node_runtime` part (record) and the Node verdicts (verdicts)."""
