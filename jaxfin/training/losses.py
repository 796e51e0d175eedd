"""Losses over the decoder's hidden states. One primitive, `chunked_logprobs`: per-token log-probabilities of the
targets under the output embedding, `chunk` positions at a time with the logits rematerialised in the backward
pass, so [B, T, V] f32 logits never exist (V = 128k-152k); each chunk's log-probs are reduced on the spot (a
masked sum for SFT, per-sequence sums for a preference loss) and the reductions summed over chunks.

A loss function has the signature the train step differentiates (training/step.py):
    loss_fn(adapters, base, batch, rng) -> (loss_sum, aux)   aux: {"count", "tokens", "metrics": {k: (sum, n)}}
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp

from jaxfin.model import decoder, matmul, neftune
from jaxfin.model.config import ModelConfig
from jaxfin.model.params import Params
from jaxfin.training import preference

Batch = dict[str, jax.Array]
# The backward pass of the logits matmul: "compute" multiplies the logits' cotangent, cast to the compute dtype, by
# the output embedding (bf16 x bf16 -> f32, model/matmul.py); "f32" lets autodiff multiply the f32 cotangent (an
# f32 / TF32 matmul on GPUs). The forward is bf16 x bf16 -> f32 in both; in an f32 model both are the same.
LOSS_BACKWARDS = ("compute", "f32")


def chunked_logprobs(h_BTD: jax.Array, w_VD: jax.Array, targets_BT: jax.Array, chunk: int,
                     reduce: Callable[..., Any], *extras_BT: jax.Array, backward: str = "compute") -> Any:
    """Sum over sequence chunks of reduce(logp_Bc, *extras_Bc), where logp_Bc = log softmax(h @ w.T)[target] of
    the chunk's positions; positions padded to a whole number of chunks carry zeros in every extra (so a mask
    among them keeps them out). The logits of a chunk are recomputed in the backward pass (jax.checkpoint);
    `backward` (LOSS_BACKWARDS) sets the precision of the logits matmul's backward."""
    if backward not in LOSS_BACKWARDS:
        raise ValueError(f"backward must be one of {LOSS_BACKWARDS}, got {backward!r}")
    B, T, D = h_BTD.shape
    chunk = min(chunk, T)
    pad = -T % chunk
    if pad:
        h_BTD = jnp.pad(h_BTD, ((0, 0), (0, pad), (0, 0)))
        targets_BT = jnp.pad(targets_BT, ((0, 0), (0, pad)))
        extras_BT = tuple(jnp.pad(e, ((0, 0), (0, pad))) for e in extras_BT)
    n = (T + pad) // chunk
    to_chunks = lambda x: x.reshape(B, n, chunk, *x.shape[2:]).swapaxes(0, 1)  # noqa: E731  [n, B, c, ...]
    w_VD = w_VD.astype(h_BTD.dtype)

    @jax.checkpoint
    def one_chunk(xs: tuple) -> Any:
        h_BcD, t_Bc, *extras_Bc = xs
        if backward == "compute":
            logits_BcV = matmul.einsum("BcD,VD->BcV", h_BcD, w_VD, h_BcD.dtype)
        else:
            logits_BcV = jnp.einsum("BcD,VD->BcV", h_BcD, w_VD, preferred_element_type=jnp.float32)
        target_Bc = jnp.take_along_axis(logits_BcV, t_Bc[..., None], axis=-1)[..., 0]
        return reduce(target_Bc - jax.nn.logsumexp(logits_BcV, axis=-1), *extras_Bc)

    per_chunk = jax.lax.map(one_chunk, (to_chunks(h_BTD), to_chunks(targets_BT), *map(to_chunks, extras_BT)))
    return jax.tree.map(lambda x: jnp.sum(x, axis=0), per_chunk)


def _masked_nll(logp_Bc: jax.Array, mask_Bc: jax.Array) -> jax.Array:
    return jnp.sum(-logp_Bc * mask_Bc)


def chunked_cross_entropy(h_BTD: jax.Array, w_VD: jax.Array, targets_BT: jax.Array, mask_BT: jax.Array,
                          chunk: int, backward: str = "compute") -> jax.Array:
    """Sum over masked-in positions of -log softmax(h @ w.T)[target] (chunked_logprobs with a masked sum)."""
    return chunked_logprobs(h_BTD, w_VD, targets_BT, chunk, _masked_nll, mask_BT, backward=backward)


@dataclasses.dataclass(frozen=True)
class SftConfig:
    """Static settings of the SFT loss (hashable, closed over by jit)."""

    lora_scale: float
    lora_dropout: float = 0.0
    neftune_alpha: float = 0.0
    neftune_length: str = "segment"
    loss_chunk: int = 128
    task_names: tuple[str, ...] = ()  # two or more: the batch has "task_ids_BT" and aux logs "loss/NAME" per task
    loss_backward: str = "compute"  # one of LOSS_BACKWARDS


def sft_loss(adapters: Params, base: Params, batch: Batch, rng: jax.Array, *, cfg: ModelConfig,
             hp: SftConfig) -> tuple[jax.Array, dict]:
    """Summed token cross-entropy of one micro-batch of packed rows (targets where loss_mask_BT is 1), with
    NEFTune noise on the embeddings and LoRA dropout drawn from `rng`; aux counts the supervised tokens."""
    noise_rng, dropout_rng = jax.random.split(rng)
    x_BTD = decoder.embed(base, batch["tokens_BT"], cfg)
    x_BTD = neftune.add_noise(x_BTD, batch["segment_ids_BT"], noise_rng, hp.neftune_alpha, hp.neftune_length)
    h_BTD, _ = decoder.decoder(base, x_BTD, batch["positions_BT"], cfg, segment_ids_BT=batch["segment_ids_BT"],
                               lora=adapters, lora_scale=hp.lora_scale, lora_dropout=hp.lora_dropout,
                               rng=dropout_rng if hp.lora_dropout > 0 else None)
    w_VD, mask_BT = decoder.output_embedding(base, cfg), batch["loss_mask_BT"]
    metrics = {}
    if hp.task_names:
        # One pass over the chunks gives the total and each task's share (a token belongs to its segment's task).
        by_task = functools.partial(_masked_nll_by_task, num_tasks=len(hp.task_names))
        loss, task_sums_K = chunked_logprobs(h_BTD, w_VD, batch["targets_BT"], hp.loss_chunk, by_task, mask_BT,
                                             batch["task_ids_BT"], backward=hp.loss_backward)
        for i, name in enumerate(hp.task_names):
            metrics[f"loss/{name}"] = (task_sums_K[i], jnp.sum(mask_BT * (batch["task_ids_BT"] == i)))
    else:
        loss = chunked_cross_entropy(h_BTD, w_VD, batch["targets_BT"], mask_BT, hp.loss_chunk, hp.loss_backward)
    aux = {"count": jnp.sum(mask_BT), "tokens": jnp.sum(batch["segment_ids_BT"] > 0), "metrics": metrics}
    return loss, aux


def _masked_nll_by_task(logp_Bc: jax.Array, mask_Bc: jax.Array, task_Bc: jax.Array, *,
                        num_tasks: int) -> tuple[jax.Array, jax.Array]:
    nll_Bc = -logp_Bc * mask_Bc
    return jnp.sum(nll_Bc), jnp.stack([jnp.sum(jnp.where(task_Bc == i, nll_Bc, 0.0)) for i in range(num_tasks)])


# --------------------------------------------------------------------------------------------------------------
# Preference (DPO-family) losses over pairs of rows (data/preference_batches.py: [P, 2, T], chosen then rejected).


def _row_sums(logp_Bc: jax.Array, mask_Bc: jax.Array) -> jax.Array:
    return jnp.sum(jnp.where(mask_Bc > 0, logp_Bc, 0.0), axis=1)


def sequence_logps(params: Params, lora: Params | None, batch: Batch, *, cfg: ModelConfig, lora_scale: float,
                   chunk: int) -> jax.Array:
    """[P, 2] summed completion log-probs log pi(y | x) of the chosen and rejected rows of each pair, both rows in
    one pass (lora=None: the model without adapters, the DPO reference). TRL's sum over the completion tokens
    (trl DPOTrainer._compute_loss), through chunked_logprobs: no [B, T, V] logits."""
    tokens = batch["tokens_P2T"]
    P, _, T = tokens.shape
    rows = lambda x: x.reshape(2 * P, T)  # noqa: E731  pair p -> rows 2p (chosen), 2p + 1 (rejected)
    h_BTD, _ = decoder.decoder(params, decoder.embed(params, rows(tokens), cfg), rows(batch["positions_P2T"]), cfg,
                               segment_ids_BT=rows(batch["segment_ids_P2T"]), lora=lora, lora_scale=lora_scale)
    logp_B = chunked_logprobs(h_BTD, decoder.output_embedding(params, cfg), rows(batch["targets_P2T"]), chunk,
                              _row_sums, rows(batch["loss_mask_P2T"]))
    return logp_B.reshape(P, 2)


@dataclasses.dataclass(frozen=True)
class DpoConfig:
    """Static settings of the preference loss (hashable, closed over by jit). `precomputed_ref`: the batch carries
    the reference log-probs (ref_logps_P2) instead of the step computing them."""

    lora_scale: float
    beta: float = 0.1
    loss_type: str = "sigmoid"
    label_smoothing: float = 0.0
    precomputed_ref: bool = False
    loss_chunk: int = 128


def dpo_loss(adapters: Params, base: Params, batch: Batch, rng: jax.Array, *, cfg: ModelConfig,
             hp: DpoConfig) -> tuple[jax.Array, dict]:
    """Summed per-pair preference loss of one micro-batch of pairs (training/preference.py: TRL's sigmoid / ipo /
    hinge / robust) and the sums of TRL's metrics; aux counts the pairs (empty padding pairs count for nothing).
    The policy is the base with the adapters, the reference the same base without them, under stop_gradient (or
    the precomputed values). No dropout, no NEFTune: `rng` is unused."""
    del rng
    policy_P2 = sequence_logps(base, adapters, batch, cfg=cfg, lora_scale=hp.lora_scale, chunk=hp.loss_chunk)
    if hp.precomputed_ref:
        ref_P2 = batch["ref_logps_P2"]
    else:
        ref_P2 = jax.lax.stop_gradient(sequence_logps(base, None, batch, cfg=cfg, lora_scale=1.0,
                                                      chunk=hp.loss_chunk))
    len_P2 = jnp.sum(batch["loss_mask_P2T"], axis=-1)
    losses_P, metrics = preference.dpo_loss(policy_P2[:, 0], policy_P2[:, 1], ref_P2[:, 0], ref_P2[:, 1],
                                            beta=hp.beta, loss_type=hp.loss_type, label_smoothing=hp.label_smoothing,
                                            chosen_len_P=len_P2[:, 0], rejected_len_P=len_P2[:, 1])
    sums = preference.pair_sums(losses_P, metrics, len_P2[:, 0] > 0)
    count, loss = sums.pop("pairs"), sums.pop("loss")
    aux = {"count": count, "tokens": jnp.sum(batch["segment_ids_P2T"] > 0),
           "metrics": {k: (v, count) for k, v in sums.items()}}
    return loss, aux
