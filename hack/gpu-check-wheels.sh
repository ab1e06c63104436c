#!/usr/bin/env bash
# Wheels for `make gpu-check GPU_CHECK_PY=python3` on an offline CUDA machine whose Python already
# has torch, accelerate, safetensors, tokenizers, huggingface-hub, PyYAML and filelock (a stock
# CUDA PyTorch image) but not the packages below, at the versions this checkout's venv has, for
# CPython 3.12 on x86-64 Linux. transformers is among them: training_arguments() uses its
# `activation_checkpointing` argument (transformers >= 5.2x).
#
#   hack/gpu-check-wheels.sh DEST            # here, with network access and `make setup` done
#   BNB_CUDA=130 hack/gpu-check-wheels.sh DEST   # bitsandbytes with only its CUDA 13.0 library
#                                                # (torch.version.cuda there): 43 MB -> 7 MB
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site DEST/*.whl   # there
#   PYTHONPATH=/tmp/site make gpu-check GPU_CHECK_PY=python3
set -euo pipefail
dest=${1:?usage: hack/gpu-check-wheels.sh DEST [PYTHON_VERSION]}
python_version=${2:-3.12}
root=$(cd "$(dirname "$0")/.." && pwd)
names='^(transformers|peft|bitsandbytes|pydantic|pydantic[-_]core|annotated-types|typing-inspection|minio|argon2-cffi|argon2-cffi-bindings|cffi|pycparser|pycryptodome)=='
pins=$("$root/.venv/bin/python" -m pip freeze 2>/dev/null | grep -iE "$names")
mkdir -p "$dest"
# shellcheck disable=SC2086  # one requirement per word
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$python_version" \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d "$dest" $pins
if [[ -n "${BNB_CUDA:-}" ]]; then
    for wheel in "$dest"/bitsandbytes-*.whl; do
        libs=$(unzip -Z1 "$wheel" | grep -E 'libbitsandbytes_(cuda|rocm|xpu)' \
            | grep -v "libbitsandbytes_cuda${BNB_CUDA}\.so" || true)
        # shellcheck disable=SC2086
        [[ -z "$libs" ]] || zip -q -d "$wheel" $libs
    done
fi
du -ch "$dest"/*.whl | tail -1
