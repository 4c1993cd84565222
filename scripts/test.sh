#!/usr/bin/env bash
# The whole test suite, in the three test environments:
#   .venv         axolotl 0.19.0 / trl 1.9 / transformers 5.16 : every test
#   .venv-latest  newest trl 1.16 / transformers 5.2x           : core, TRL, scoring, analysis
#   .venv-axolotl-lowest  axolotl 0.17.0 / trl 1.5 / transformers 5.9 : tests/axolotl (lowest supported Axolotl)
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_DISABLED=true WANDB_MODE=disabled \
       TOKENIZERS_PARALLELISM=false AXOLOTL_DO_NOT_TRACK=1 HF_HUB_DISABLE_TELEMETRY=1 DO_NOT_TRACK=1
bash scripts/setup_env.sh main
bash scripts/setup_env.sh latest
bash scripts/setup_env.sh lowest
echo "== lint"
.venv/bin/ruff check ual_plugin tests benchmarks
echo "== tests: .venv (axolotl 0.19.0, trl 1.9, transformers 5.16)"
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
echo "== tests: .venv-latest (newest trl / transformers)"
.venv-latest/bin/python -m pytest -q -p no:cacheprovider --ignore=tests/axolotl "$@"
echo "== tests: .venv-axolotl-lowest (axolotl 0.17.0, trl 1.5, transformers 5.9): tests/axolotl"
.venv-axolotl-lowest/bin/python -m pytest -q -p no:cacheprovider tests/axolotl "$@"
