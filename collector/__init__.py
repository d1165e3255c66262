"""The central collector: stores OOM records and answers queries."""
