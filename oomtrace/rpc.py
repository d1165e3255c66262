"""gRPC status of a failed call. grpc raises RpcError objects that are also
grpc.Call at run time, which the type stubs cannot express."""

from __future__ import annotations

import grpc


def status(exc: grpc.RpcError) -> tuple[grpc.StatusCode | None, str]:
    code = getattr(exc, "code", None)
    details = getattr(exc, "details", None)
    return (code() if callable(code) else None, details() if callable(details) else str(exc))
