"""Where records go once built.

privacy.py  what must not leave the node (redaction), applied at the one exit
spool.py    the durable, fsynced spool every record is written to first
export.py   streams the spool to the collector, at least once
sinks.py    stdout, for --stdout
"""
