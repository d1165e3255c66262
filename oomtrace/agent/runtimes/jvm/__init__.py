"""JVMs (HotSpot, any vendor): which processes are JVMs and what JDK
(discovery), their memory flags resolved as HotSpot resolves them, with
where each came from, and the maximum heap its ergonomics work out (flags),
HotSpot's performance data file and its bounded parser (perfdata), found
and read at the kill through the victim's mount namespace and summed
(state), the record's `jvm` part (record) and the JVM verdicts (verdicts)."""
