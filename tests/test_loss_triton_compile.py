"""The Triton kernel compiled ahead of time for sm_90 (Triton's own ptxas; no GPU needed), specialised
exactly as at run time (alignment and divisibility attributes of real arguments on a padded logits
buffer), for aligned and unaligned vocabularies: no register spills, the target logit read before the
first barrier (no cross-warp race with the in-place gradient), 16-byte accesses in every row body."""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")


def _report(*args: str) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    out = subprocess.run([sys.executable, "-m", "ual_plugin.loss_triton", "90", *args], env=env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def compiled() -> list[dict]:
    """Every configuration at an aligned and an unaligned vocabulary, plus the table's choice at
    Llama-3's vocabulary with and without added tokens; softcap on and off."""
    return _report("32000,32001", "all") + _report("128256,128257", "table")


def test_every_configuration_compiles_without_register_spills(compiled):
    from ual_plugin.loss_triton import CONFIGS

    assert {(r["block_v"], r["num_warps"]) for r in compiled} == set(CONFIGS)
    assert {r["vocab"] for r in compiled} == {32000, 32001, 128256, 128257}
    for row in compiled:
        assert row["stack_bytes"] == 0 and 0 < row["registers"] <= 128, row


def test_target_logit_is_read_before_the_first_barrier(compiled):
    """Pass 2 overwrites column y with its gradient; a warp that read z_y after a barrier could see it."""
    for row in compiled:
        assert row["unpredicated_2byte_loads"] == 1 and row["target_load_before_barrier"], row


def test_row_bodies_use_16_byte_accesses_for_any_vocabulary(compiled):
    """With the padded row stride every body slice moves 16 bytes per access, even at V = 32001 or
    128257; only the masked tail of an unaligned vocabulary falls back to 2-byte stores."""
    for row in compiled:
        assert row["body_vector_loads"] > 0 and row["body_vector_stores"] > 0, row
        per_thread = row["block_v"] // (32 * row["num_warps"])
        if row["vocab"] % 16 == 0:
            assert row["tail_scalar_stores"] == 0, row
        else:
            assert 0 < row["tail_scalar_stores"] <= per_thread, row
