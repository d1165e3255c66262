"""The node agent: loads the BPF programs, builds one record per OOM kill."""

# The top-level agent/ folder is a link to this package, so with the
# repository root on sys.path (pytest puts it there) `import agent` would load
# every module a second time, as other objects. Only one name is allowed.
if __name__ != "oomtrace.agent":
    raise ImportError(f"import the agent as oomtrace.agent, not as {__name__!r}")
