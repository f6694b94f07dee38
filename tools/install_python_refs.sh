#!/usr/bin/env bash
# Installs the Python reference stack that the interop tests run (tests/interop.rs, tests/qlora.rs:
# exports loaded by transformers, peft and bitsandbytes) at the versions the fixtures were made
# with. Where python3 already has exactly these versions, nothing is installed; otherwise they go
# into a virtual environment, target/python-refs, which the tests use when it exists (see
# `reference_python` in tests/common/mod.rs; SHARD_TRAIN_PYTHON names another interpreter).
# PyPI's torch wheel for Linux brings CUDA libraries (a few GB); the tests run it on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."

pins=(torch==2.15.0 transformers==5.25.0 peft==0.21.2 bitsandbytes==0.50.2 safetensors==0.8.0 accelerate==1.16.0)
venv=target/python-refs

# Exit status 0 when the interpreter has every pinned version (torch's local tag, +cu..., aside).
has_pins() {
  "$1" - "${pins[@]}" <<'PY'
import importlib.metadata as metadata
import sys

missing = []
for pin in sys.argv[1:]:
    name, version = pin.split("==")
    try:
        found = metadata.version(name).split("+")[0]
    except metadata.PackageNotFoundError:
        found = None
    if found != version:
        missing.append(f"{pin} (found {found})")
if missing:
    print("missing: " + ", ".join(missing))
sys.exit(1 if missing else 0)
PY
}

python=${SHARD_TRAIN_PYTHON:-python3}
if has_pins "$python"; then
  echo "$python has the reference stack: ${pins[*]}"
  exit 0
fi
if [ ! -x "$venv/bin/python3" ] || ! has_pins "$venv/bin/python3"; then
  python3 -m venv "$venv"
  "$venv/bin/python3" -m pip install --quiet --upgrade pip
  "$venv/bin/python3" -m pip install --quiet "${pins[@]}"
  has_pins "$venv/bin/python3"
fi
echo "$venv has the reference stack: ${pins[*]}"
