"""DPO-family preference losses over per-pair sequence log-probs, with TRL 1.16's DPOTrainer semantics.

Source: trl/trainer/dpo_trainer.py (TRL 1.16.0), `DPOTrainer._compute_loss`: the loss branches and the block
"Log the metrics". The sequence log-probs come from `DPOTrainer._compute_loss` / `compute_ref_log_probs`:

    log pi(y | x) = sum over completion tokens t of log softmax(logits at t - 1)[y_t]

a plain SUM over the completion tokens (prompt and padding carry label -100 and contribute exactly 0), never a
mean; the same for the policy (adapters on) and the reference (adapters off, or a frozen copy "ref" of a
pre-trained adapter, see tests/trl_dpo_reference.py). With

    chosen_logratios   = policy_chosen - ref_chosen          (f_divergence_type="reverse_kl", TRL's default)
    rejected_logratios = policy_rejected - ref_rejected
    delta              = chosen_logratios - rejected_logratios

the per-pair losses are

    sigmoid  -log sigmoid(beta * delta)                                    (DPO, Rafailov et al. 2023, eq. 7)
    hinge    relu(1 - beta * delta)                                        (SLiC, Zhao et al. 2023)
    ipo      (chosen_logratios / Lc - rejected_logratios / Lr - 1 / (2 beta))^2   (IPO, Azar et al. 2023, eq. 17)
    robust   (-(1 - eps) log sigmoid(beta delta) + eps log sigmoid(-beta delta)) / (1 - 2 eps)   (rDPO, Chowdhury
             et al. 2024; eps = label_smoothing, the probability a label is flipped)

where Lc / Lr are the completion lengths in tokens, clamped to >= 1: TRL's IPO divides each log-ratio by
`completion_mask.sum(dim=1).clamp(min=1.0)` (the length-normalised form the IPO authors confirmed). Careful:
TRL counts the UNshifted completion mask of the (possibly truncated) sequence, i.e. every completion token in the
row, also a completion token at position 0 that no logit scores (only possible with an empty prompt).

`label_smoothing` only enters `robust` in TRL 1.16 (and exo_pair / aot, not implemented here). In particular the
`sigmoid` loss IGNORES it: the conservative-DPO smoothing that older TRL versions applied to `sigmoid` is gone.
To avoid silently training something else than asked, dpo_loss refuses label_smoothing != 0 for the other types.

TRL's batch loss is `per_sequence_loss.mean()` over the pairs of the (per-device micro-)batch; with gradient
accumulation the Trainer divides each micro-batch loss by the number of accumulation steps (DPOTrainer sets
`loss_is_scaled_for_ga = False`) and DDP averages over devices, so an update is the mean over all its pairs when
the micro-batches hold equally many pairs. jaxfin's exact form: sum the per-pair losses over all micro-batches and
divide by the number of pairs (`pair_sums` + `pair_means`).

Logged metrics, per micro-batch in TRL (`self.accelerator.gather(x).mean()` over the pairs of all devices), then
`DPOTrainer.log` averages those per-micro-batch means over the logging window (a mean of means; equal to the mean
over pairs when micro-batches are equally large):

    rewards/chosen      beta * chosen_logratios      (detached)
    rewards/rejected    beta * rejected_logratios
    rewards/accuracies  1.0 if rewards/chosen > rewards/rejected (strictly) else 0.0
    rewards/margins     rewards/chosen - rewards/rejected
    logps/chosen        policy_chosen   (the summed sequence log-prob)
    logps/rejected      policy_rejected

The rewards always use beta * logratio, also for ipo and hinge. TRL also logs token-level metrics of the policy
forward, not produced here (they need per-token quantities from the LM head; a chunked log-prob function can add
them): `entropy` = mean over ALL completion tokens (chosen and rejected rows) of the next-token distribution's
entropy; `logits/chosen` (`logits/rejected`) = mean over the chosen (rejected) completion tokens of the logits'
mean over the vocabulary; `mean_token_accuracy` = share of CHOSEN completion tokens whose label is the argmax;
`num_tokens` = running total of attention-mask tokens (prompt + completion, both rows of every pair) trained on.
Each is a ratio of sums over the micro-batch (not a mean of per-row means).

Not implemented (TRL options whose defaults we match): f_divergence_type other than reverse_kl, ld_alpha (LD-DPO
length weighting), use_weighting (WPO), several loss_type values combined with loss_weights, and the other loss
types (exo_pair, nca_pair, bco_pair, sppo_hard, aot, aot_unpaired, apo_zero, apo_down, discopop, sft,
sigmoid_norm).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

LOSS_TYPES = ("sigmoid", "hinge", "ipo", "robust")
METRICS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
           "logps/rejected")


def check_config(beta: float, loss_type: str, label_smoothing: float = 0.0) -> None:
    """ValueError naming the setting when (beta, loss_type, label_smoothing) is not one dpo_loss computes."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type={loss_type!r}: choose one of {', '.join(LOSS_TYPES)}")
    if not beta > 0:
        raise ValueError(f"beta={beta}: must be > 0")
    if loss_type == "robust":
        if not 0.0 <= label_smoothing < 0.5:
            raise ValueError(f"label_smoothing={label_smoothing}: the robust loss needs 0 <= label_smoothing < 0.5 "
                             "(the probability that a preference label is flipped)")
    elif label_smoothing != 0.0:
        raise ValueError(f"label_smoothing={label_smoothing} has no effect on loss_type={loss_type!r} in TRL 1.16 "
                         "(only 'robust' uses it); set it to 0 or use loss_type='robust'")


def dpo_loss(policy_chosen_P: jax.Array, policy_rejected_P: jax.Array, ref_chosen_P: jax.Array,
             ref_rejected_P: jax.Array, *, beta: float, loss_type: str = "sigmoid", label_smoothing: float = 0.0,
             chosen_len_P: jax.Array | None = None,
             rejected_len_P: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Per-pair losses [P] and per-pair metric values {name in METRICS: [P]} from summed sequence log-probs.

    `chosen_len_P` / `rejected_len_P`: completion token counts (TRL's unshifted completion mask summed per row),
    needed by loss_type="ipo" only. The metrics are computed from stop-gradient values, as TRL detaches them.
    Everything is computed in float32 (log-probs summed over long completions lose digits in bf16)."""
    check_config(beta, loss_type, label_smoothing)
    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    chosen_logratios = f32(policy_chosen_P) - f32(ref_chosen_P)
    rejected_logratios = f32(policy_rejected_P) - f32(ref_rejected_P)
    logits = beta * (chosen_logratios - rejected_logratios)
    if loss_type == "sigmoid":
        losses = -jax.nn.log_sigmoid(logits)
    elif loss_type == "hinge":
        losses = jax.nn.relu(1.0 - logits)
    elif loss_type == "ipo":
        if chosen_len_P is None or rejected_len_P is None:
            raise ValueError("loss_type='ipo' needs chosen_len_P and rejected_len_P (completion token counts)")
        ipo_delta = (chosen_logratios / jnp.maximum(f32(chosen_len_P), 1.0)
                     - rejected_logratios / jnp.maximum(f32(rejected_len_P), 1.0))
        losses = (ipo_delta - 1.0 / (2.0 * beta)) ** 2
    else:  # robust
        eps = label_smoothing
        losses = (-(1.0 - eps) * jax.nn.log_sigmoid(logits) + eps * jax.nn.log_sigmoid(-logits)) / (1.0 - 2.0 * eps)

    chosen_rewards = beta * jax.lax.stop_gradient(chosen_logratios)
    rejected_rewards = beta * jax.lax.stop_gradient(rejected_logratios)
    metrics = {
        "rewards/chosen": chosen_rewards,
        "rewards/rejected": rejected_rewards,
        "rewards/accuracies": (chosen_rewards > rejected_rewards).astype(jnp.float32),
        "rewards/margins": chosen_rewards - rejected_rewards,
        "logps/chosen": jax.lax.stop_gradient(f32(policy_chosen_P)),
        "logps/rejected": jax.lax.stop_gradient(f32(policy_rejected_P)),
    }
    return losses, metrics


def pair_sums(losses_P: jax.Array, metrics: dict[str, jax.Array],
              valid_P: jax.Array | None = None) -> dict[str, jax.Array]:
    """Scalar sums over the valid pairs: {"loss": sum of losses, each metric: its sum, "pairs": the count}.

    Sums from several micro-batches add up; `pair_means` of the total is the exact mean over all pairs (TRL's
    mean when its micro-batches are equally large). `valid_P` (bool or 0/1) masks padding pairs out."""
    w = jnp.ones(losses_P.shape, jnp.float32) if valid_P is None else jnp.asarray(valid_P, jnp.float32)
    # where, not multiply: a padding pair's loss may be inf/NaN (e.g. all-zero rows) and 0 * inf is NaN
    keep = lambda x: jnp.sum(jnp.where(w > 0, x * w, 0.0))  # noqa: E731
    return {"loss": keep(losses_P), **{k: keep(v) for k, v in metrics.items()}, "pairs": jnp.sum(w)}


def pair_means(sums: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """TRL's logged values from (accumulated) pair_sums: every sum divided by the pair count ("pairs" dropped)."""
    count = jnp.maximum(sums["pairs"], 1.0)
    return {k: v / count for k, v in sums.items() if k != "pairs"}
