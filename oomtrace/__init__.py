"""oomtrace: eBPF agent and collector that explain every out-of-memory kill."""

__version__ = "0.1.0"
