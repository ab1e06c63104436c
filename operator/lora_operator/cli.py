"""`lorajob`: plan, validate, generate CRDs, run the operator (the demo is `lorajob-demo`, in the
devkit, which the operator image does not ship).

Each subcommand lives in its own module with a `main(argv) -> int`; this file only dispatches,
importing lazily so `lorajob plan` does not pay for kopf and `lorajob run` not for matplotlib.
"""

from __future__ import annotations

import importlib
import os
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "plan": (
        "lora_operator.memory.report",
        "print the GPU memory breakdown and placement of a LoRAJob",
    ),
    "calibrate": (
        "lora_operator.memory.calibrate",
        "fit the GPU catalog's efficiency to finished runs (kubectl get lj -A -o json)",
    ),
    "validate": ("lora_operator.api.validate_cmd", "check LoRAJob files against the API"),
    "crds": ("lora_operator.api.crd", "print, write or check the generated CRD YAML"),
    "shapes": (
        "lora_operator.memory.shapes",
        "print, write or check the precomputed shapes of the shipped model configs",
    ),
    "run": ("lora_operator.controller.main", "run the operator (kopf) against the current cluster"),
    "promote": (
        "lora_operator.api.promote_cmd",
        "serve a succeeded run's adapter (rollback): sets spec.serving.promote/run via the API",
    ),
}


def usage() -> str:
    lines = ["usage: lorajob <command> [options]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`lorajob <command> --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if args[0] not in COMMANDS:
        print(f"lorajob: unknown command {args[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[args[0]][0])
    try:
        code: int = module.main(args[1:])
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`lorajob plan ... | head`): stop quietly, as Unix tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("lorajob: interrupted", file=sys.stderr)
        return 130
    except RecursionError:
        # A backstop: user input is bounded where it is parsed (lora_contract.bounded_parse), so
        # only a reader that skips it gets here; one line, not a thousand-frame traceback.
        print(
            f"error: lorajob {args[0]}: the input is nested too deeply to read "
            "(nothing real nests so deep)",
            file=sys.stderr,
        )
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
