"""jaxfin.training.preference against TRL 1.16's own DPO loss code.

The reference is `trl.DPOTrainer._compute_loss` itself, called unbound on a stand-in trainer (only the attributes
the method reads) and a stand-in model whose fused LM head returns given per-token log-probs, with the reference
log-probs passed precomputed (`precompute_ref_log_probs`). So every line of TRL's loss and metric code runs; only
the transformer is replaced. Both sides get the same float32 inputs; tolerance 1e-6 relative (plus 1e-6 absolute
for values near 0): what is left is float32 rounding in a different operation order.
"""

from __future__ import annotations

import math
import types
from collections import defaultdict

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from trl import DPOTrainer
from trl.trainer.utils import FusedCausalLMOutput

from jaxfin.training import preference


RTOL, ATOL = 1e-6, 1e-6


def _stand_in_trainer(beta: float, loss_type: str, label_smoothing: float) -> types.SimpleNamespace:
    identity = lambda x: x  # noqa: E731  one process: gather is the identity
    return types.SimpleNamespace(
        model=types.SimpleNamespace(training=True),
        accelerator=types.SimpleNamespace(device=torch.device("cpu"), gather=identity, gather_for_metrics=identity),
        aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True, f_divergence_type="reverse_kl",
        loss_types=[loss_type], loss_weights=[1.0], beta=beta, label_smoothing=label_smoothing, use_weighting=False,
        args=types.SimpleNamespace(), _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0, _tp_size=1,
    )


def _random_batch(rng: np.random.Generator, P: int) -> dict[str, torch.Tensor]:
    """A TRL-collated batch shape: rows [chosen_0..P-1, rejected_0..P-1], right-padded, random per-token
    log-probs on the (shifted) completion positions and zeros elsewhere, as the fused LM head returns them."""
    prompt = rng.integers(1, 6, P)
    comp = rng.integers(1, 40, 2 * P)
    lengths = np.concatenate([prompt, prompt]) + comp
    T = int(lengths.max())
    completion_mask = np.zeros((2 * P, T), np.int64)
    for i in range(2 * P):
        completion_mask[i, np.concatenate([prompt, prompt])[i]: lengths[i]] = 1
    per_token = -rng.exponential(2.0, (2 * P, T - 1)).astype(np.float32) * completion_mask[:, 1:]
    return {
        "input_ids": torch.zeros((2 * P, T), dtype=torch.long),
        "attention_mask": torch.tensor((np.arange(T)[None] < lengths[:, None]).astype(np.int64)),
        "completion_mask": torch.tensor(completion_mask),
        "per_token": torch.tensor(per_token),
        # reference log-probs near the policy's, so that the sigmoid / hinge regimes are all visited
        "ref_chosen_logps": torch.tensor(per_token[:P].sum(1) + rng.normal(0, 3, P).astype(np.float32)),
        "ref_rejected_logps": torch.tensor(per_token[P:].sum(1) + rng.normal(0, 3, P).astype(np.float32)),
    }


def trl_reference(batch: dict[str, torch.Tensor], beta: float, loss_type: str,
                  label_smoothing: float) -> tuple[float, dict[str, float]]:
    """(loss, metrics) as TRL's DPOTrainer._compute_loss computes and logs them for this batch."""
    trainer = _stand_in_trainer(beta, loss_type, label_smoothing)
    per_token = batch["per_token"]

    def model(**kwargs: object) -> FusedCausalLMOutput:
        assert kwargs["fused_lm_head"] is True
        zeros = torch.zeros_like(per_token)
        return FusedCausalLMOutput(log_probs=per_token, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool())

    inputs = {k: v for k, v in batch.items() if k != "per_token"}
    loss = DPOTrainer._compute_loss(trainer, model, inputs, return_outputs=False)
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    return float(loss), metrics


def jax_side(batch: dict[str, torch.Tensor], beta: float, loss_type: str,
             label_smoothing: float) -> tuple[np.ndarray, dict[str, float]]:
    """(per-pair losses, pair means of the metrics) from jaxfin, fed the same float32 sequence log-probs."""
    logps = batch["per_token"].sum(dim=1).numpy()  # the op TRL applies: a sum over the sequence axis
    P = logps.shape[0] // 2
    lens = batch["completion_mask"].sum(dim=1).numpy()
    losses, metrics = preference.dpo_loss(
        logps[:P], logps[P:], batch["ref_chosen_logps"].numpy(), batch["ref_rejected_logps"].numpy(), beta=beta,
        loss_type=loss_type, label_smoothing=label_smoothing, chosen_len_P=lens[:P], rejected_len_P=lens[P:])
    means = preference.pair_means(preference.pair_sums(losses, metrics))
    return np.asarray(losses), {k: float(v) for k, v in means.items()}


CASES = [(lt, beta, ls) for lt in ("sigmoid", "hinge", "ipo") for beta in (0.1, 1.0) for ls in (0.0,)]
CASES += [("robust", beta, ls) for beta in (0.1, 1.0) for ls in (0.0, 0.1, 0.3)]


@pytest.mark.parametrize("loss_type,beta,label_smoothing", CASES)
def test_matches_trl(loss_type: str, beta: float, label_smoothing: float) -> None:
    rng = np.random.default_rng([7, int(beta * 10), int(label_smoothing * 10), preference.LOSS_TYPES.index(loss_type)])
    P = 16
    batch = _random_batch(rng, P)
    trl_loss, trl_metrics = trl_reference(batch, beta, loss_type, label_smoothing)
    losses, means = jax_side(batch, beta, loss_type, label_smoothing)
    assert losses.shape == (P,)
    np.testing.assert_allclose(means["loss"], trl_loss, rtol=RTOL, atol=ATOL)
    for name in preference.METRICS:
        np.testing.assert_allclose(means[name], trl_metrics[name], rtol=RTOL, atol=ATOL, err_msg=name)
    # Per pair: TRL on each pair alone (a batch of one pair) gives that pair's loss.
    for i in (0, 5, 11):
        one = {k: (torch.cat([v[i: i + 1], v[P + i: P + i + 1]]) if v.shape[0] == 2 * P else v[i: i + 1])
               for k, v in batch.items()}
        np.testing.assert_allclose(losses[i], trl_reference(one, beta, loss_type, label_smoothing)[0],
                                   rtol=RTOL, atol=ATOL)


def test_sigmoid_regimes_are_all_visited() -> None:
    """The random batches above are not all in one regime (a test that only sees saturated pairs proves little)."""
    batch = _random_batch(np.random.default_rng([7, 1, 0, 0]), 16)
    losses, means = jax_side(batch, 1.0, "hinge", 0.0)
    assert (losses == 0).any() and (losses > 0).any()  # hinge: both sides of the kink
    assert 0.0 < means["rewards/accuracies"] < 1.0


def test_equal_log_probs_give_ln2_and_zero_rewards() -> None:
    x = jnp.array([-3.5, -120.0, 0.0])
    losses, metrics = preference.dpo_loss(x, x, x, x, beta=1.0)
    np.testing.assert_allclose(np.asarray(losses), math.log(2.0), rtol=1e-7)
    for name in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        np.testing.assert_array_equal(np.asarray(metrics[name]), 0.0)
    np.testing.assert_array_equal(np.asarray(metrics["logps/chosen"]), np.asarray(x))


def test_sums_add_up_over_micro_batches_with_padding_pairs() -> None:
    """Two micro-batches summed, then divided by the pair count, equal the mean over all pairs; a padding pair
    (valid 0, even with non-finite log-probs) contributes nothing, its gradient included."""
    rng = np.random.default_rng(3)
    pc, pr, rc, rr = (jnp.asarray(rng.normal(-20, 5, 6), jnp.float32) for _ in range(4))
    full = preference.pair_means(preference.pair_sums(*preference.dpo_loss(pc, pr, rc, rr, beta=0.1)))

    def sums(sl: slice, pad: bool) -> dict[str, jax.Array]:
        args = [x[sl] for x in (pc, pr, rc, rr)]
        valid = jnp.ones(args[0].shape, bool)
        if pad:
            args = [jnp.append(a, -jnp.inf) for a in args]
            valid = jnp.append(valid, False)
        return preference.pair_sums(*preference.dpo_loss(*args, beta=0.1), valid)

    total = jax.tree.map(jnp.add, sums(slice(0, 4), True), sums(slice(4, 6), False))
    assert float(total["pairs"]) == 6
    for k, v in preference.pair_means(total).items():
        np.testing.assert_allclose(float(v), float(full[k]), rtol=1e-6, err_msg=k)

    def loss_of(pc_: jax.Array) -> jax.Array:
        args = [jnp.append(x, -jnp.inf) for x in (pc_, pr, rc, rr)]
        valid = jnp.append(jnp.ones(6, bool), False)
        return preference.pair_sums(*preference.dpo_loss(*args, beta=0.1), valid)["loss"]

    g = jax.grad(loss_of)(pc)
    assert np.isfinite(np.asarray(g)).all() and np.abs(np.asarray(g)).min() > 0


def test_gradient_is_trl_formula() -> None:
    """d loss / d policy_chosen = -beta * sigmoid(-beta * delta) for the sigmoid loss (autodiff sanity)."""
    pc, pr, rc, rr = jnp.array([-10.0]), jnp.array([-12.0]), jnp.array([-11.0]), jnp.array([-11.5])
    g = jax.grad(lambda x: preference.dpo_loss(x, pr, rc, rr, beta=0.5)[0].sum())(pc)
    delta = (-10.0 + 11.0) - (-12.0 + 11.5)
    np.testing.assert_allclose(float(g[0]), -0.5 / (1.0 + math.exp(0.5 * delta)), rtol=1e-6)


@pytest.mark.parametrize("kwargs,match", [
    (dict(loss_type="kto"), "loss_type"),
    (dict(beta=0.0), "beta"),
    (dict(label_smoothing=0.1), "label_smoothing"),
    (dict(loss_type="robust", label_smoothing=0.5), "label_smoothing"),
    (dict(loss_type="ipo"), "chosen_len_P"),
])
def test_bad_config(kwargs: dict, match: str) -> None:
    x = jnp.zeros(2)
    with pytest.raises(ValueError, match=match):
        preference.dpo_loss(x, x, x, x, **{"beta": 0.1, **kwargs})
