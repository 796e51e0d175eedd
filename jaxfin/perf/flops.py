"""The model side of jaxfin.profile's ratios: useful training FLOPs per token and device peaks for MFU, and the
weight bytes a decode step reads for the memory roofline.

MFU = useful FLOPs per token x tokens/s / (dense bf16 peak x devices), with useful FLOPs as PaLM's appendix B
counts them (Chowdhery et al. 2022: 6N + attention), adapted to LoRA: the base is frozen, so its weights get no
gradients (4N, not 6N), and the adapters train like ordinary weights (6 N_lora).
"""

from __future__ import annotations

from typing import Any, Sequence

import jax

from jaxfin.model.config import ModelConfig
from jaxfin.model.params import PROJECTION, PROJECTIONS, features

# Dense (no 2:4 sparsity) bf16 matmul peak per device, FLOP/s, by device_kind as JAX reports it; first substring
# match wins. Sources: NVIDIA H100 datasheet (SXM 989.4, PCIe 756 = half the "with sparsity" figures), H200 SXM
# = H100 SXM compute, A100 datasheet 312; Cloud TPU system-architecture pages (v4 275, v5e "TPU v5 lite" 197,
# v5p "TPU v5" 459, v6e "TPU v6 lite" 918). NVL cards run at other clocks: unknown here rather than guessed.
PEAK_BF16 = (
    ("h100 pcie", 756e12), ("h100 nvl", None), ("h200 nvl", None), ("h100", 989.4e12), ("h200", 989.4e12),
    ("a100", 312e12), ("tpu v4 lite", None), ("tpu v4", 275e12), ("tpu v5 lite", 197e12), ("tpu v5e", 197e12),
    ("tpu v5", 459e12), ("tpu v6 lite", 918e12), ("tpu v6e", 918e12),
)


def peak_flops(device_kind: str) -> float | None:
    """The device's dense bf16 peak in FLOP/s, None where unknown (CPUs have no meaningful one)."""
    kind = device_kind.lower()
    return next((peak for key, peak in PEAK_BF16 if key in kind), None)


def matmul_params(cfg: ModelConfig) -> int:
    """N: weights of every matmul a token goes through, the output projection included and the input embedding
    (a lookup) excluded; norm weights and biases (elementwise, O(D)) are not matmul weights."""
    per_layer = sum(features(cfg, p.in_axis) * features(cfg, p.out_axis) for p in PROJECTIONS)
    return cfg.num_layers * per_layer + cfg.vocab_size * cfg.hidden_size


def lora_params(cfg: ModelConfig, targets: Sequence[str], rank: int) -> int:
    """N_lora: adapter weights, r * (in + out) per adapted projection and layer."""
    per_layer = sum(rank * (features(cfg, PROJECTION[t].in_axis) + features(cfg, PROJECTION[t].out_axis))
                    for t in targets)
    return cfg.num_layers * per_layer


def flops_per_token(cfg: ModelConfig, targets: Sequence[str], rank: int, seq_len: int) -> tuple[float, str]:
    """Useful training FLOPs per token and the formula with its numbers.

    Frozen base (N weights): 2N forward + 2N activation gradients, no weight gradients. Adapters (N_lora):
    2 forward + 2 activation gradients + 2 weight gradients per weight. Causal attention per layer: QK^T and PV
    over T/2 keys on average, 2 * 2 * (T/2) * n_q * H forward, backward twice that (dQ, dK, dV, dP), so
    6 * T/2 * 2 * n_q * H = 6 * T * n_q * H per layer. T is the packed row length (shorter packed segments need
    less, but the count follows the row, as MaxText's does). Rematerialised recomputation is not useful work.
    """
    N, NL = matmul_params(cfg), lora_params(cfg, targets, rank)
    L, T, nq, H = cfg.num_layers, seq_len, cfg.num_heads, cfg.head_dim
    attn = 6 * L * T * nq * H
    total = 4 * N + 6 * NL + attn
    formula = (f"4·N + 6·N_lora + 6·L·T·n_q·H = 4·{N:,} + 6·{NL:,} + 6·{L}·{T}·{nq}·{H} = {total:,} "
               f"(N: matmul weights incl. output projection, excl. input embedding; 4N = 2N forward + 2N "
               f"activation grads, frozen base has no weight grads; 6·N_lora = adapters' forward + activation + "
               f"weight grads; attention: causal forward 2·2·(T/2)·n_q·H per layer, backward 2x forward)")
    return float(total), formula


def weight_bytes_per_token(base: Any, cfg: ModelConfig) -> int:
    """Bytes of weights one decode step at batch 1 reads: every param, except that the input embedding table
    contributes one row (unless tied, when it is read whole as the output projection)."""
    total = sum(x.nbytes for x in jax.tree.leaves(base))
    if not cfg.tie_word_embeddings:
        e = base["embed_VD"]
        total -= e.nbytes - e.nbytes // e.shape[0]
    return int(total)
