"""Go programs, the one language whose runtime oomtrace reads: what a binary
and its environment say (buildinfo), where its runtime keeps the GC's state
(symbols, layouts), the GC probe (probes), the heap and GC rate each second
(sampling), what was in effect at the kill (settings), the record's `go` part
(record) and the Go verdicts (verdicts)."""
