#!/usr/bin/env bash
# Create (or reuse) a virtual environment for ual-plugin.
#   scripts/setup_env.sh main    -> .venv         : everything (axolotl 0.19.0 and what it pins: trl 1.9, transformers 5.16)
#   scripts/setup_env.sh latest  -> .venv-latest  : newest trl 1.16.x / transformers 5.2x, no axolotl
# An environment is rebuilt only when pyproject.toml or this script changed since it was made.
set -euo pipefail
cd "$(dirname "$0")/.."
which="${1:-main}"
PYTHON="${PYTHON:-python3}"
case "$which" in
  main)   venv=.venv;        spec=".[all]";                        extra=() ;;
  latest) venv=.venv-latest; spec=".[trl,scoring,analysis,dev]";   extra=("trl>=1.16,<2" "transformers>=5.20,<6") ;;
  *) echo "usage: $0 main|latest" >&2; exit 2 ;;
esac
stamp="$venv/.ual-setup-stamp"
want="$(cat pyproject.toml "$0" | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "[setup] $venv is up to date"
  exit 0
fi
echo "[setup] building $venv (first time: a few minutes)"
"$PYTHON" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
# CPU build of torch first (a wheel pip finds locally where one is provided), then the project.
"$venv/bin/python" -m pip install -q "torch==2.13.0"
"$venv/bin/python" -m pip install -q -e "$spec" "${extra[@]}"
echo "$want" > "$stamp"
"$venv/bin/python" - <<'PY'
import importlib.metadata as md
for name in ("torch", "transformers", "trl", "peft", "datasets", "axolotl"):
    try:
        print(f"[setup]   {name} {md.version(name)}")
    except md.PackageNotFoundError:
        pass
PY
