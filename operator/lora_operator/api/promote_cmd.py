"""`lorajob promote NS/JOB RUN`: serve an earlier (or any succeeded) run's adapter by setting
`spec.serving.promote: manual` and `spec.serving.run: RUN` through the Kubernetes API (the
kubeconfig, as kubectl). A rollback is that spec change: in a GitOps setup make the same edit
in Git, or the sync puts the old spec back.

The run must be a Succeeded run in the LoRAJob's status.runs, checked here so a typo is refused
before anything is written; the patch carries the resourceVersion read, so a concurrent edit
makes it fail (409) instead of being overwritten.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from typing import Any

from lora_contract.types import GROUP, PLURAL, VERSION, Phase, PromotePolicy

LORAJOBS = f"{GROUP}/{VERSION}/{PLURAL}"
RUN_ID = re.compile(r"^r[0-9]{1,9}$")


class PromoteError(Exception):
    """A refusal: one line, nothing changed."""


def parse_target(text: str) -> tuple[str, str]:
    namespace, sep, name = text.partition("/")
    if not sep or not namespace or not name or "/" in name:
        raise PromoteError(f"target {text!r}: expected NAMESPACE/LORAJOB")
    return namespace, name


def promotion_patch(obj: dict[str, Any], run: str) -> dict[str, Any]:
    """The merge patch, after checking `run` against the object's status.runs."""
    if not RUN_ID.match(run):
        raise PromoteError(f"run {run!r}: expected a run id such as r2")
    runs = [r for r in (obj.get("status") or {}).get("runs") or [] if isinstance(r, dict)]
    succeeded = [r.get("id") for r in runs if r.get("phase") == Phase.Succeeded.value]
    if run not in succeeded:
        found = next((r for r in runs if r.get("id") == run), None)
        why = f"is {found.get('phase')}" if found else "is not in status.runs"
        listed = ", ".join(str(i) for i in succeeded) or "none"
        raise PromoteError(f"run {run} {why}; succeeded runs: {listed}")
    return {
        "metadata": {"resourceVersion": obj["metadata"].get("resourceVersion")},
        "spec": {"serving": {"promote": PromotePolicy.manual.value, "run": run}},
    }


async def promote(info: Any, namespace: str, name: str, run: str) -> dict[str, Any]:
    from ..controller.kube import Kube, KubeError

    kube = Kube(info)
    try:
        obj = await kube.get(LORAJOBS, namespace, name)
        if obj is None:
            raise PromoteError(f"LoRAJob {namespace}/{name} not found")
        patch = promotion_patch(obj, run)
        try:
            return await kube.patch(LORAJOBS, namespace, name, patch)
        except KubeError as exc:
            if exc.status == 409:
                raise PromoteError(
                    f"LoRAJob {namespace}/{name} changed while promoting; run it again"
                ) from None
            raise PromoteError(f"cannot patch LoRAJob {namespace}/{name}: {exc}") from None
    finally:
        await kube.close()


def login() -> Any:
    import kopf

    settings = kopf.OperatorSettings()
    info = kopf.login_with_kubeconfig(settings=settings)
    if info is None:
        raise PromoteError("no kubeconfig to log in with (set KUBECONFIG)")
    return info


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="lorajob promote",
        description="Serve RUN's adapter: sets spec.serving.promote=manual, spec.serving.run=RUN "
        "(a rollback when RUN is older). With GitOps, make the same change in Git.",
    )
    parser.add_argument("target", help="NAMESPACE/LORAJOB")
    parser.add_argument("run", help="a succeeded run id from status.runs, e.g. r2")
    args = parser.parse_args(argv)
    try:
        namespace, name = parse_target(args.target)
        asyncio.run(promote(login(), namespace, name, args.run))
    except PromoteError as exc:
        print(f"error: lorajob promote: {exc}", file=sys.stderr)
        return 1
    print(
        f"lorajob {namespace}/{name}: spec.serving set to promote=manual, run={args.run}; "
        "the operator points serving at it (status.servingRun)"
    )
    return 0
