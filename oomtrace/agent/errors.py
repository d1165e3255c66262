"""Exceptions the agent raises. Each says what went wrong and what to do next."""

from __future__ import annotations


class AgentError(Exception):
    """Base of every error the agent raises on purpose."""


class BtfError(AgentError):
    """The kernel's BTF is missing, unreadable, or lacks a type or field the
    agent needs."""


class HostNotSupportedError(AgentError):
    """The host cannot run the agent: not root, no BTF, no tracefs, no BCC,
    no kernel headers for BCC to compile against. `reasons` lists every
    problem found, so one run reports them all."""

    def __init__(self, reasons: list[str]) -> None:
        self.reasons = reasons
        super().__init__("; ".join(reasons))


class BpfLoadError(AgentError):
    """A BPF program failed to compile, load or attach."""


class DecodeError(AgentError):
    """A kernel event could not be decoded (wrong size, unknown kind)."""
