"""The node agent: loads the BPF programs, builds one record per OOM kill."""
