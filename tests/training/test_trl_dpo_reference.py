"""Smoke test of the TRL reference harness (tests/trl_dpo_reference.py) on a tiny random Llama with a random,
non-zero LoRA adapter: finite loss, non-zero gradients for every adapter tensor, TRL's metric names, the batch
layout TRL documents, bit-identical reruns, nothing written outside a temporary directory, and jaxfin's
dpo_loss on the harness's per-row log-probs reproducing TRL's loss and metrics (1e-5 relative: the same float32
log-probs, a different order of a few float32 operations)."""

from __future__ import annotations

import math
import os

import numpy as np
import peft
import pytest
import torch
import transformers

import trl_dpo_reference as ref

from jaxfin.training import preference


PAIRS = [([1, 5, 6], [7, 9, 2], [8, 8, 8, 8, 8]),  # rejected: longer, no EOS (hit max_new_tokens)
         ([1, 10, 11, 12], [13, 2], [14]),
         ([1, 20], [21, 22, 23, 2], [24, 25, 2])]
TRL_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
               "logps/rejected", "entropy", "logits/chosen", "logits/rejected", "mean_token_accuracy", "num_tokens")


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("trl_dpo")
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, head_dim=8, bos_token_id=1,
                                   eos_token_id=2, max_position_embeddings=128)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(root / "model")
    lcfg = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules=[
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    adapted = peft.get_peft_model(model, lcfg)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in adapted.named_parameters():
            if "lora_" in name:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))  # non-zero B: policy != base
    adapted.save_pretrained(root / "adapter")
    return str(root / "model"), str(root / "adapter")


def test_sigmoid_batch(dirs: tuple[str, str]) -> None:
    model_dir, adapter_dir = dirs
    before = set(os.listdir("."))
    r = ref.run_dpo_batch(model_dir, adapter_dir, PAIRS, beta=1.0)
    assert set(os.listdir(".")) == before

    assert np.isfinite(r.loss) and r.loss > 0
    assert set(TRL_METRICS) <= set(r.metrics)
    from safetensors.numpy import load_file
    saved = load_file(os.path.join(adapter_dir, "adapter_model.safetensors"))
    assert set(r.grads) == set(saved) and len(saved) == 2 * 7 * 2
    for name, g in r.grads.items():
        assert g.shape == saved[name].shape and np.isfinite(g).all() and np.abs(g).max() > 0, name

    # The layout TRL feeds: [chosen rows, rejected rows], prompt + completion, right padding, completion mask.
    P = len(PAIRS)
    for i, (p, c, rj) in enumerate(PAIRS):
        for row, comp in ((i, c), (P + i, rj)):
            n = len(p) + len(comp)
            np.testing.assert_array_equal(r.input_ids[row, :n], p + comp)
            np.testing.assert_array_equal(r.attention_mask[row], np.arange(r.input_ids.shape[1]) < n)
            np.testing.assert_array_equal(r.completion_mask[row], (np.arange(r.input_ids.shape[1]) >= len(p)) &
                                          (np.arange(r.input_ids.shape[1]) < n))

    # jaxfin's loss on TRL's own per-row log-probs gives TRL's loss and metrics.
    losses, metrics = preference.dpo_loss(r.policy_logps[:P], r.policy_logps[P:], r.ref_logps[:P], r.ref_logps[P:],
                                          beta=1.0)
    means = preference.pair_means(preference.pair_sums(losses, metrics))
    np.testing.assert_allclose(float(means["loss"]), r.loss, rtol=1e-5)
    for name in preference.METRICS:
        np.testing.assert_allclose(float(means[name]), r.metrics[name], rtol=1e-5, atol=1e-6, err_msg=name)
    assert abs(r.metrics["rewards/margins"]) > 1e-3  # the adapter moved the policy away from the reference

    again = ref.run_dpo_batch(model_dir, adapter_dir, PAIRS, beta=1.0)
    assert again.loss == r.loss and again.metrics == r.metrics
    for name in r.grads:
        np.testing.assert_array_equal(again.grads[name], r.grads[name])


def test_truncation_and_ipo(dirs: tuple[str, str]) -> None:
    """max_length cuts prompt + completion from the end (keep_start); ipo divides by the kept completion length."""
    r = ref.run_dpo_batch(*dirs, PAIRS, beta=0.1, loss_type="ipo", max_length=5)
    assert r.input_ids.shape[1] == 5
    P = len(PAIRS)
    lens = r.completion_mask.sum(axis=1)
    kept = [min(len(p) + len(c), 5) - len(p) for p, c in [(p, c) for p, c, _ in PAIRS] + [(p, r) for p, _, r in PAIRS]]
    assert kept == [2, 1, 3, 2, 1, 3]
    np.testing.assert_array_equal(lens, kept)
    losses, _ = preference.dpo_loss(r.policy_logps[:P], r.policy_logps[P:], r.ref_logps[:P], r.ref_logps[P:],
                                    beta=0.1, loss_type="ipo", chosen_len_P=lens[:P], rejected_len_P=lens[P:])
    np.testing.assert_allclose(float(np.mean(losses)), r.loss, rtol=1e-5)


def test_adapter_reference_is_the_initial_policy(dirs: tuple[str, str]) -> None:
    """DPOTrainer(PeftModel): TRL's reference is a frozen copy of the loaded adapter, so at the first batch the
    rewards are 0 and the sigmoid loss is ln 2, while the gradients are not 0."""
    r = ref.run_dpo_batch(*dirs, PAIRS, beta=1.0, reference="adapter")
    np.testing.assert_allclose(r.loss, math.log(2.0), rtol=1e-6)
    np.testing.assert_array_equal(r.policy_logps, r.ref_logps)
    assert r.metrics["rewards/margins"] == 0.0
    assert all(np.abs(g).max() > 0 for g in r.grads.values())
    assert not any(".ref." in k for k in r.grads)
