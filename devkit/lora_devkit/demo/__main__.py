"""`python -m lora_devkit.demo` (the same as the `lorajob-demo` console script)."""

import sys

from .main import cli

sys.exit(cli())
