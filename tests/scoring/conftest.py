from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.scoring.server import FakeOpenAI

REPO = Path(__file__).resolve().parents[2]
KEY_VARS = ("OPENAI_API_KEY", "AZURE_OPENAI_API_KEY", "AZURE_OPENAI_ENDPOINT", "AZURE_OPENAI_AD_TOKEN",
            "OPENAI_API_VERSION", "OPENAI_BASE_URL", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID")


@pytest.fixture(autouse=True)
def _clean_openai_env(monkeypatch):
    for var in KEY_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-secret")


@pytest.fixture
def server():
    with FakeOpenAI() as srv:
        yield srv


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return path


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def alpaca_rows(n: int, extra: dict[int, str] | None = None, prefix: str = "r") -> list[dict]:
    """Rows whose fake-server score is known: row i scores (7 * i) % 100 unless a directive says otherwise."""
    rows = []
    for i in range(n):
        directive = f"[[id={prefix}{i}]] [[score={(7 * i) % 100}]]"
        if extra and i in extra:
            directive += " " + extra[i]
        rows.append({"instruction": f"{directive} Question number {i}?", "input": "", "output": f"Answer {i}.",
                     "source": "even" if i % 2 == 0 else "odd", "idx": i})
    return rows


def run_cli(args: list[str], env_extra: dict[str, str] | None = None, timeout: float = 120,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in KEY_VARS}
    env.update(env_extra or {})
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("HF_DATASETS_OFFLINE", "1")
    return subprocess.run([sys.executable, "-m", "ual_plugin.cli", *args], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=cwd or REPO)


def fast_retry_args() -> list[str]:
    return ["--max-retries", "3", "--no-progress"]
