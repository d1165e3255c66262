"""`oomtrace certs`: a CA and the certificates mutual TLS needs."""

from __future__ import annotations

import argparse
from pathlib import Path

from oomtrace.cli import AddCommand


def run(args: argparse.Namespace) -> int:
    from oomtrace import tls

    made = tls.make_set(
        args.dir,
        # localhost too: a port-forward, or a query from inside the pod.
        collector_hosts=tuple(dict.fromkeys([*args.collector_host, "localhost", "127.0.0.1"])),
        nodes=tuple(args.node),
        shared_agents=args.agents,
        readers=tuple(args.reader),
        days=args.days,
    )
    for path in made:
        print(path)
    if args.secrets:
        print(tls.write_secrets(args.dir, agents=args.agents))
    return 0


def register(add: AddCommand) -> None:
    cs = add(
        "certs",
        "make a CA and the certificates mutual TLS needs (kept in DIR; an existing CA is reused)",
        "oomtrace certs ./pki --node node-a --node node-b --reader alice",
        "oomtrace certs ./pki --collector-host oomtrace-collector.oomtrace.svc --agents --reader ops",
    )
    cs.add_argument("dir", type=Path, help="where ca.crt, ca.key and the others go")
    cs.add_argument(
        "--collector-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a name or address clients reach the collector at (repeatable; localhost and "
        "127.0.0.1 are always in)",
    )
    cs.add_argument(
        "--node",
        action="append",
        default=[],
        help="an agent certificate for this node (role ingest: its records must name it); "
        "repeatable",
    )
    cs.add_argument(
        "--agents",
        action="store_true",
        help="one agent certificate for any node (role ingest-any-node), e.g. a DaemonSet's Secret",
    )
    cs.add_argument(
        "--reader",
        action="append",
        default=[],
        help="a query certificate for this person or tool (role query); repeatable",
    )
    cs.add_argument("--days", type=float, default=365, help="how long the certificates hold")
    cs.add_argument(
        "--secrets",
        action="store_true",
        help="also write DIR/secrets.yaml: the Secrets deploy/kubernetes mounts "
        "(oomtrace-collector-tls, and oomtrace-agent-tls with --agents), for kubectl apply -f",
    )
    cs.set_defaults(run=run)
