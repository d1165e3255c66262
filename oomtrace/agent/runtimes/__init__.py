"""Language runtimes inside the victims (not container runtimes: see
cgroups/container_runtimes.py).

processes.py  what /proc says about a process (cmdline, exe) and which runtime it is
outputs.py    where a runtime process's own words go (stderr, cwd), read at discovery
go/           Go: build info, symbols, heap and GC settings, probes, verdicts
jvm/          the JVM: discovery, flags, perfdata, state, verdicts
nodejs/       Node.js: discovery, settings, verdicts
"""
