"""`lorajob run`: the operator process (kopf) with namespaces, peering, liveness and metrics.

Two replicas never both act: kopf peering (a `KopfPeering`/`ClusterKopfPeering` object named by
`--peering`, which the Helm chart installs) lets only the highest-priority operator work.
`--standalone` skips peering: for one replica, tests and the emulator (which has no peering CRD).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from .config import CONFIG_ENV, ConfigError, ConfigSource


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
    parser.add_argument("--standalone", action="store_true", help="no peering (single replica)")
    parser.add_argument("--peering", default=None, help="peering object name (default: kopf's)")
    parser.add_argument("--priority", type=int, default=0, help="peering priority")
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
        metrics_port=args.metrics_port,
        namespaces=namespaces,
        concurrency=args.concurrency,
    )
    register(registry, options)
    try:
        kopf.run(
            registry=registry,
            standalone=args.standalone,
            priority=args.priority,
            peering_name=args.peering,
            liveness_endpoint=args.liveness,
            clusterwide=not namespaces,
            namespaces=namespaces,
        )
    except KeyboardInterrupt:
        return 0
    except asyncio.CancelledError:
        return 0
    logging.shutdown()
    return 0
