"""jaxfin's DPO loss against TRL 1.16's DPOTrainer (tests/trl_dpo_reference.py) on the same token ids: a tiny
random Llama and a tiny random Qwen2 (tied embeddings, q/k/v biases) with a random NON-zero LoRA adapter exported
to PEFT, the reference being the base with the adapter off (TRL's DPOTrainer(base, peft_config) path). Same loss
and logged metrics (1e-5 relative) and the same adapter gradients (1e-4) for every loss type and beta 0.1 and 1 (CASES).

jaxfin's side is the function the train step differentiates (losses.dpo_loss under jax.value_and_grad, divided by
the pair count as step.train_step divides it), on rows built by data/preference_batches.encode."""

from __future__ import annotations

import functools

import jax
import numpy as np
import peft as hf_peft
import pytest
import torch

import hf_models
import trl_dpo_reference as ref

from jaxfin.data import preference_batches
from jaxfin.io import hf, peft
from jaxfin.model.params import LORA_TARGETS
from jaxfin.training import losses


PAIRS = [([1, 5, 6], [7, 9, 2], [8, 8, 8, 8, 8]),  # rejected: longer, no EOS (hit max_new_tokens)
         ([1, 10, 11, 12], [13, 2], [14]),
         ([1, 20], [21, 22, 23, 2], [24, 25, 2]),
         ([1, 30, 31, 32, 33, 34], [35, 36, 2], [37, 38, 37, 38, 37, 38, 37])]
# Every loss type at one beta per family (llama 1.0, qwen2 0.1), plus sigmoid at the other: each (loss type, beta)
# pair is covered by one family, at 10 compiles rather than 16 (the CPU budget of the suite).
OTHER_BETA = {1.0: 0.1, 0.1: 1.0}
CASES = {family: [(loss_type, beta, 0.1 if loss_type == "robust" else 0.0)
                  for loss_type in ("sigmoid", "ipo", "hinge", "robust")] + [("sigmoid", OTHER_BETA[beta], 0.0)]
         for family, beta in (("llama", 1.0), ("qwen2", 0.1))}


@pytest.fixture(scope="module", params=("llama", "qwen2"))
def model(request, tmp_path_factory):
    """(model dir, adapter dir, jaxfin params, ModelConfig, adapters, LoraConfig, family) for one family."""
    root = tmp_path_factory.mktemp(f"dpo_trl_{request.param}")
    m = hf_models.tiny_model(request.param, seed=3)
    m.save_pretrained(root / "model")
    adapted = hf_peft.get_peft_model(m, hf_peft.LoraConfig(r=4, lora_alpha=8, target_modules=list(LORA_TARGETS)))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in adapted.named_parameters():
            if "lora_" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))  # non-zero B: policy != reference
    adapted.save_pretrained(root / "adapter")
    params, cfg, _ = hf.load_hf(root / "model")
    adapters, lcfg, _ = peft.load(root / "adapter", cfg)
    return str(root / "model"), str(root / "adapter"), params, cfg, adapters, lcfg, request.param


@functools.lru_cache(maxsize=None)
def _grad_fn(cfg, hp):
    return jax.jit(jax.value_and_grad(functools.partial(losses.dpo_loss, cfg=cfg, hp=hp), has_aux=True))


@pytest.mark.parametrize("case", range(5))
def test_loss_metrics_and_grads_equal_trl(model, case):
    model_dir, adapter_dir, params, cfg, adapters, lcfg, family = model
    loss_type, beta, label_smoothing = CASES[family][case]
    want = ref.run_dpo_batch(model_dir, adapter_dir, PAIRS, beta=beta, loss_type=loss_type,
                             label_smoothing=label_smoothing)

    rows = preference_batches.encode(PAIRS, seq_len=16)
    batch = rows.rows(np.arange(len(PAIRS)))
    hp = losses.DpoConfig(lora_scale=lcfg.scale, beta=beta, loss_type=loss_type, label_smoothing=label_smoothing,
                          loss_chunk=8)  # 16 = two chunks
    (loss_sum, aux), grads = _grad_fn(cfg, hp)(adapters, params, batch, jax.random.key(0))
    count = float(aux["count"])
    assert count == len(PAIRS)
    np.testing.assert_allclose(float(loss_sum) / count, want.loss, rtol=1e-5)
    for name, (s, n) in aux["metrics"].items():
        np.testing.assert_allclose(float(s) / float(n), want.metrics[name], rtol=1e-5, atol=1e-6, err_msg=name)
    assert abs(want.metrics["rewards/margins"]) > 1e-3  # the adapter moved the policy away from the reference

    assert len(want.grads) == 2 * len(LORA_TARGETS) * cfg.num_layers
    for proj in LORA_TARGETS:
        for i in range(cfg.num_layers):
            name_a, name_b = peft.tensor_names(i, proj)
            got_a = np.asarray(grads["layers"][proj]["a"][i]).T / count  # [R, in], PEFT's lora_A layout
            got_b = np.asarray(grads["layers"][proj]["b"][i]).T / count  # [out, R]
            for got, name in ((got_a, name_a), (got_b, name_b)):
                w = want.grads[name]
                np.testing.assert_allclose(got, w, rtol=1e-4, atol=1e-4 * np.abs(w).max(), err_msg=name)
