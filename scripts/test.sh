#!/usr/bin/env bash
# The whole test suite, in the four test environments:
#   .venv         axolotl 0.19.0 / trl 1.9 / transformers 5.16 (Python 3.11) : every test
#   .venv-latest  newest trl 1.16 / transformers 5.2x (Python 3.11)          : core, TRL, scoring, analysis
#   .venv-axolotl-lowest  axolotl 0.17.0 / trl 1.5 / transformers 5.9 (Python 3.11) : tests/axolotl (lowest supported)
#   .venv-axolotl-py312   axolotl 0.21.0 / trl 1.14 / transformers 5.20 (Python 3.12) : tests/axolotl (newest supported)
# The last needs a Python 3.12 (pyenv's, python3.12 on PATH, or PYTHON312=...); setup_env.sh stops and says so
# when there is none.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_DISABLED=true WANDB_MODE=disabled \
       TOKENIZERS_PARALLELISM=false AXOLOTL_DO_NOT_TRACK=1 HF_HUB_DISABLE_TELEMETRY=1 DO_NOT_TRACK=1
bash scripts/setup_env.sh main
bash scripts/setup_env.sh latest
bash scripts/setup_env.sh lowest
bash scripts/setup_env.sh py312
echo "== lint"
.venv/bin/ruff check ual_plugin tests benchmarks
echo "== tests: .venv (axolotl 0.19.0, trl 1.9, transformers 5.16)"
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
echo "== tests: .venv-latest (newest trl / transformers)"
.venv-latest/bin/python -m pytest -q -p no:cacheprovider --ignore=tests/axolotl "$@"
# The two Axolotl environments run side by side (their tests spend much of their time starting `axolotl train`
# processes, so two suites share 2 cores well); each one's output follows when both are done.
logs=$(mktemp -d)
.venv-axolotl-lowest/bin/python -m pytest -q -p no:cacheprovider tests/axolotl "$@" > "$logs/lowest" 2>&1 &
lowest=$!
.venv-axolotl-py312/bin/python -m pytest -q -p no:cacheprovider tests/axolotl "$@" > "$logs/py312" 2>&1 &
py312=$!
status=0
wait "$lowest" || status=1
echo "== tests: .venv-axolotl-lowest (axolotl 0.17.0, trl 1.5, transformers 5.9): tests/axolotl"
cat "$logs/lowest"
wait "$py312" || status=1
echo "== tests: .venv-axolotl-py312 (axolotl 0.21.0, trl 1.14, transformers 5.20, Python 3.12): tests/axolotl"
cat "$logs/py312"
rm -rf "$logs"
exit "$status"
