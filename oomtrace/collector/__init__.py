"""The central collector: stores OOM records and answers queries."""

# The top-level collector/ folder is a link to this package: one name only
# (see oomtrace/agent/__init__.py).
if __name__ != "oomtrace.collector":
    raise ImportError(f"import the collector as oomtrace.collector, not as {__name__!r}")
