"""benchmarks/h200_session.sh and h200_probe.py, the prepared GPU run, checked on CPU: the script is clean shell,
its dry run's profile command parses with every variant's keys and values valid (the flags and config keys as they
are now), and the probe runs a case end to end at toy sizes. The whole script at toy sizes (SMOKE=1) takes minutes
on a 2-core CPU, so it is run by hand (NOTES_17.md), not here."""

import json
import os
import shlex
import shutil
import subprocess
import sys

import pytest

from jaxfin import profile as profile_cli
from jaxfin.perf import profile

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SESSION = os.path.join(REPO, "benchmarks", "h200_session.sh")


def _dry_run(tmp_path, **env) -> list[list[str]]:
    out = subprocess.run(["bash", SESSION], cwd=REPO, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "OUT": str(tmp_path), "DRY_RUN": "1", **env})
    assert out.returncode == 0, out.stderr
    return [shlex.split(line) for line in out.stdout.splitlines() if line.startswith("timeout ")]


def test_session_script_is_clean_shell():
    subprocess.run(["bash", "-n", SESSION], check=True)
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed")
    out = subprocess.run(["shellcheck", SESSION], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout


@pytest.mark.parametrize("smoke", ["", "1"])
def test_session_profile_command_parses(tmp_path, smoke):
    """The GPU command (8B shape) and the CPU smoke command: flags known, config keys and values valid, every
    variant checked (profile.check_variants), nothing run."""
    commands = _dry_run(tmp_path, SMOKE=smoke)
    (prof,) = [c for c in commands if "jaxfin.profile" in c]
    argv = prof[prof.index("jaxfin.profile") + 1:]
    config, opts = profile_cli.parse(argv)
    assert config.model.lora_impl == "f32" and config.train.loss_backward == "f32"  # the pre-issue-17 path
    assert len(opts.variants) >= 5 and opts.trace and opts.out.endswith("profile.json")
    variants = profile.check_variants(config, opts.variants)
    assert {v[2].lora_impl for v in variants} >= {"compute", "fused"}
    assert {v[2].remat for v in variants} >= {"proj", "attn_proj"}
    assert {v[2].attention_impl for v in variants} >= {"cudnn"}
    assert {v[1].train.loss_backward for v in variants} >= {"compute"}
    if smoke:
        assert opts.skip_peer and config.model.path is None
    else:
        assert not opts.skip_peer and config.model.path == "deepseek-ai/DeepSeek-R1-Distill-Llama-8B"
        assert (config.train.seq_len, config.train.batch_size, config.neftune.alpha) == (1024, 16, 5.0)
    assert any("h200_probe.py" in " ".join(c) for c in commands)


def test_probe_runs_cases_on_cpu(tmp_path):
    """PROBE_TINY=1, two cases: the cross-entropy through losses.chunked_cross_entropy (both backward precisions)
    and attention through decoder.attend (the cudnn form runs XLA on CPU: the reference's values; the cuDNN-only
    forms report an error entry without stopping the probe)."""
    env = {**os.environ, "OUT": str(tmp_path), "PROBE_TINY": "1", "PROBE_CASES": "H4_ce_chunk128,H1_attention_B16",
           "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "h200_probe.py")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads((tmp_path / "probe.json").read_text())
    case = r["H4_ce_chunk128"]
    assert set(r) == {"jax", "devices", "H4_ce_chunk128", "H1_attention_B16_T1024"}
    attn = r["H1_attention_B16_T1024"]
    assert attn["xla_mask (attention_impl=xla, the reference)"]["fwd_bwd_ms"] > 0, attn
    fast = attn["cudnn causal+segmask (attention_impl=cudnn now)"]
    assert fast["out_relerr"] < 1e-6 and fast["dq_relerr"] < 1e-6, attn
    for backward in ("f32", "compute"):
        assert case[f"loss_backward_{backward}"]["fwd_bwd_ms"] > 0, case
    # the forward is the same bf16 x bf16 -> f32 matmul in both: the same loss
    assert case["loss_backward_f32"]["loss"] == pytest.approx(case["loss_backward_compute"]["loss"])
