"""`lorajob run`: the operator process (kopf) with namespaces, leader election, liveness, metrics.

Replicas never both act: with `--leader-elect` only the holder of a Lease in the operator's
namespace runs kopf (see `leader.py`); the others stand by. kopf peering (`--peering`) is a
separate, optional pause switch: an operator started with a higher `--priority` (say, a
developer's) pauses the in-cluster one. `--standalone`: neither (one replica, tests, the demo).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from typing import Any

from .config import CONFIG_ENV, ConfigError, ConfigSource
from .elected import run_elected
from .events import set_reporting_instance
from .kube import Kube
from .leader import LeaderElector, LeaseSettings, default_identity, default_namespace
from .metrics import LEADER
from .metrics import serve as serve_metrics


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lorajob run", description=__doc__.splitlines()[0])
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        help="watch this namespace (repeatable); default: the kubeconfig's or all",
    )
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch all namespaces")
    parser.add_argument(
        "--config",
        default=os.environ.get(CONFIG_ENV),
        help=f"operator config YAML, reloaded on change (env {CONFIG_ENV})",
    )
    parser.add_argument("--standalone", action="store_true", help="no kopf peering")
    parser.add_argument("--peering", default=None, help="kopf peering object name (opt-in)")
    parser.add_argument("--priority", type=int, default=0, help="kopf peering priority")
    election = parser.add_argument_group("leader election (for more than one replica)")
    election.add_argument(
        "--leader-elect", action="store_true", help="act only while holding the leader Lease"
    )
    election.add_argument("--leader-elect-name", default="lora-operator", help="the Lease's name")
    election.add_argument(
        "--leader-elect-namespace",
        default=None,
        help="the Lease's namespace (default: $POD_NAMESPACE or the service account's)",
    )
    election.add_argument(
        "--leader-elect-identity", default=None, help="this replica's name (default: $POD_NAME)"
    )
    election.add_argument(
        "--leader-elect-lease-seconds",
        type=float,
        default=15.0,
        help="how long a silent leader keeps the Lease before a standby takes over",
    )
    parser.add_argument(
        "--liveness",
        default=None,
        metavar="URL",
        help="liveness endpoint, e.g. http://0.0.0.0:8080/healthz",
    )
    parser.add_argument("--metrics-port", type=int, default=None, help="Prometheus port")
    parser.add_argument(
        "--resync-seconds",
        type=float,
        default=None,
        help="how often every job's Job/progress is re-read (default: the config's "
        "progressIntervalSeconds)",
    )
    parser.add_argument("--concurrency", type=int, default=16, help="parallel reconciles")
    parser.add_argument(
        "--log-format", choices=["json", "plain", "full"], default="full", help="log format"
    )
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="store_true", help="more logs")
    verbosity.add_argument("--debug", action="store_true", help="kopf's debug logs")
    verbosity.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        source = ConfigSource.load(args.config)
    except ConfigError as exc:
        print(f"lorajob run: {exc}", file=sys.stderr)
        return 2
    if args.resync_seconds is not None and args.resync_seconds <= 0:
        print("lorajob run: --resync-seconds must be > 0", file=sys.stderr)
        return 2
    if args.leader_elect_lease_seconds < 1:
        print("lorajob run: --leader-elect-lease-seconds must be >= 1", file=sys.stderr)
        return 2

    import kopf

    from .handlers import Options, register

    kopf.configure(
        verbose=args.verbose,
        debug=args.debug,
        quiet=args.quiet,
        log_format={
            "json": kopf.LogFormat.JSON,
            "plain": kopf.LogFormat.PLAIN,
            "full": kopf.LogFormat.FULL,
        }[args.log_format],
    )
    namespaces: list[str] = list(args.namespace)
    registry = kopf.OperatorRegistry()
    options = Options(
        config=source,
        resync_seconds=args.resync_seconds or source.get().progress_interval_seconds,
        namespaces=namespaces,
        concurrency=args.concurrency,
    )
    register(registry, options)
    if args.metrics_port:
        serve_metrics(args.metrics_port)
    kopf_options: dict[str, Any] = dict(
        registry=registry,
        # Under leader election kopf peering is only on when asked for by name.
        standalone=args.standalone or (args.leader_elect and args.peering is None),
        priority=args.priority,
        peering_name=args.peering,
        liveness_endpoint=args.liveness,
        clusterwide=not namespaces,
        namespaces=namespaces,
    )
    code = 0
    try:
        if args.leader_elect:
            elector = _elector(args, namespaces)
            if elector is None:
                return 2
            operate = lambda stop: kopf.operator(stop_flag=stop, **kopf_options)  # noqa: E731
            code = asyncio.run(run_elected(elector, args.liveness, operate))
        else:
            LEADER.set(1)
            kopf.run(**kopf_options)
    except KeyboardInterrupt:
        return 0
    except asyncio.CancelledError:
        return 0
    logging.shutdown()
    return code


def _elector(args: argparse.Namespace, namespaces: list[str]) -> LeaderElector | None:
    """The Lease client, logged in as kopf will be; None (after a message) when it cannot be."""
    import kopf

    namespace = args.leader_elect_namespace or default_namespace()
    if not namespace:
        print(
            "lorajob run: --leader-elect needs the Lease's namespace: pass "
            "--leader-elect-namespace or set POD_NAMESPACE",
            file=sys.stderr,
        )
        return None
    settings = kopf.OperatorSettings()
    info = kopf.login_with_service_account(settings=settings) or kopf.login_with_kubeconfig(
        settings=settings
    )
    if info is None:
        print("lorajob run: no service account or kubeconfig to log in with", file=sys.stderr)
        return None
    lease = LeaseSettings(
        name=args.leader_elect_name,
        namespace=namespace,
        identity=args.leader_elect_identity or default_identity(),
        lease_seconds=args.leader_elect_lease_seconds,
    )
    set_reporting_instance(lease.identity)
    return LeaderElector(Kube(info), lease)
