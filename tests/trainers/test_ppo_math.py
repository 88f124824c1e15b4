"""PPO's arithmetic against straightforward loops over tokens, on random inputs with padding."""

from __future__ import annotations

import math
import threading

import pytest
import torch

from ferrotune.train.ppo_math import (
    gae,
    kl_estimate,
    masked_mean,
    masked_whiten,
    policy_loss,
    token_rewards,
    value_loss,
)

LENGTHS = [7, 3, 1, 5]  # response tokens per row; the rest of each row is padding
T = 7


def batch(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)

    def rand(scale=1.0):
        return torch.randn(len(LENGTHS), T, generator=gen, dtype=torch.float64) * scale

    mask = torch.tensor([[1.0] * n + [0.0] * (T - n) for n in LENGTHS], dtype=torch.float64)
    return rand, mask


def valid(b: int) -> range:
    return range(LENGTHS[b])


def test_gae_equals_a_loop():
    rand, mask = batch()
    rewards, values = rand(), rand()
    rewards_kept, values_kept = rewards.clone(), values.clone()
    for gamma, lam in [(1.0, 0.95), (0.9, 0.8)]:
        advantages, returns = gae(rewards, values, mask, gamma=gamma, lam=lam)
        for b in range(len(LENGTHS)):
            n, running = LENGTHS[b], 0.0
            expected = [0.0] * T
            for t in reversed(range(n)):
                next_value = values[b, t + 1].item() if t + 1 < n else 0.0
                delta = rewards[b, t].item() + gamma * next_value - values[b, t].item()
                running = delta + gamma * lam * running
                expected[t] = running
            assert advantages[b].tolist() == pytest.approx(expected, abs=1e-12)
            for t in range(T):
                want = expected[t] + values[b, t].item() if t < n else 0.0
                assert returns[b, t].item() == pytest.approx(want, abs=1e-12)
    assert torch.equal(rewards, rewards_kept) and torch.equal(values, values_kept)


@pytest.mark.parametrize("shift_mean", [True, False])
def test_whitening_equals_a_loop(shift_mean):
    rand, mask = batch(1)
    values = rand(3.0) + 2.0
    kept = [values[b, t].item() for b in range(len(LENGTHS)) for t in valid(b)]
    mean = sum(kept) / len(kept)
    variance = sum((v - mean) ** 2 for v in kept) / (len(kept) - 1)
    out = masked_whiten(values, mask, shift_mean=shift_mean)
    for b in range(len(LENGTHS)):
        for t in range(T):
            want = (values[b, t].item() - mean) / math.sqrt(variance + 1e-8)
            want = (want + (0.0 if shift_mean else mean)) if t < LENGTHS[b] else 0.0
            assert out[b, t].item() == pytest.approx(want, abs=1e-9)


def test_kl_estimators_and_rewards_equal_a_loop():
    rand, mask = batch(2)
    logp, ref_logp = -rand().abs(), -rand().abs()
    scores = torch.tensor([1.5, -0.5, 2.0, 0.25], dtype=torch.float64)
    for kind in ("k1", "k3"):
        rewards, kl = token_rewards(scores, logp, ref_logp, mask, kl_coef=0.05, kl_kind=kind)
        for b in range(len(LENGTHS)):
            for t in range(T):
                p, q = logp[b, t].item(), ref_logp[b, t].item()
                estimate = p - q if kind == "k1" else math.exp(q - p) - 1 - (q - p)
                want_kl = estimate if t < LENGTHS[b] else 0.0
                want = -0.05 * want_kl + (scores[b].item() if t == LENGTHS[b] - 1 else 0.0)
                assert kl[b, t].item() == pytest.approx(want_kl, abs=1e-12)
                assert rewards[b, t].item() == pytest.approx(want, abs=1e-12)
    assert (kl_estimate(logp, ref_logp, "k3") >= 0).all()  # k3 never negative
    with pytest.raises(ValueError, match="unknown KL estimator"):
        kl_estimate(logp, ref_logp, "k2")


def test_clipped_policy_and_value_losses_equal_a_loop():
    rand, mask = batch(3)
    logp, old_logp, advantages = -rand().abs(), -rand().abs(), rand()
    values, old_values, returns = rand(), rand(), rand()
    loss, stats = policy_loss(logp, old_logp, advantages, mask, cliprange=0.2)
    vloss, vclip = value_loss(values, old_values, returns, mask, cliprange_value=0.2)
    terms, clipped, kls, vterms, vclipped = [], 0, [], [], 0
    for b in range(len(LENGTHS)):
        for t in valid(b):
            ratio = math.exp(logp[b, t].item() - old_logp[b, t].item())
            a = advantages[b, t].item()
            plain, cut = -a * ratio, -a * min(max(ratio, 0.8), 1.2)
            terms.append(max(plain, cut))
            clipped += cut > plain
            kls.append(0.5 * (logp[b, t].item() - old_logp[b, t].item()) ** 2)
            v, old, r = values[b, t].item(), old_values[b, t].item(), returns[b, t].item()
            v_cut = old + min(max(v - old, -0.2), 0.2)
            vterms.append(0.5 * max((v - r) ** 2, (v_cut - r) ** 2))
            vclipped += (v_cut - r) ** 2 > (v - r) ** 2
    n = len(terms)
    assert loss.item() == pytest.approx(sum(terms) / n, abs=1e-12)
    assert stats["clipfrac"].item() == pytest.approx(clipped / n)
    assert stats["approx_kl"].item() == pytest.approx(sum(kls) / n, abs=1e-12)
    assert vloss.item() == pytest.approx(sum(vterms) / n, abs=1e-12)
    assert vclip.item() == pytest.approx(vclipped / n)


def test_padding_gets_no_gradient():
    rand, mask = batch(4)
    logp = (-rand().abs()).requires_grad_()
    loss, _ = policy_loss(logp, logp.detach() - 0.1, rand(), mask, cliprange=0.2)
    (grad,) = torch.autograd.grad(loss, logp)
    assert torch.all(grad[mask == 0] == 0) and grad[mask == 1].abs().sum() > 0


def test_split_batches_reduce_to_the_whole_batch():
    """Two "processes" with half the rows each (different token counts): whitening with summed
    statistics, and losses over each one's share of the global token count, averaged as DDP
    averages gradients, equal the whole batch in one process."""
    rand, mask = batch(5)
    advantages, logp = rand(), (-rand().abs()).requires_grad_()
    parts = [slice(0, 1), slice(1, 4)]  # 7 tokens and 9 tokens
    barrier, sums = threading.Barrier(2), [None, None]

    def total_for(rank):
        def total(value):
            sums[rank] = value
            barrier.wait()
            summed = sums[0] + sums[1]
            barrier.wait()
            return summed

        return total

    whitened = [None, None]

    def whiten(rank):
        rows = parts[rank]
        whitened[rank] = masked_whiten(advantages[rows], mask[rows], total=total_for(rank))

    threads = [threading.Thread(target=whiten, args=(rank,)) for rank in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert torch.allclose(torch.cat(whitened), masked_whiten(advantages, mask), atol=1e-12)

    share = mask.sum() / 2
    old = logp.detach() - 0.1
    split = [
        policy_loss(logp[r], old[r], advantages[r], mask[r], cliprange=0.2, count=share)[0]
        for r in parts
    ]
    whole = policy_loss(logp, old, advantages, mask, cliprange=0.2)[0]
    assert (sum(split) / 2).item() == pytest.approx(whole.item(), abs=1e-12)
    (grad_split,) = torch.autograd.grad(sum(split) / 2, logp)
    (grad_whole,) = torch.autograd.grad(whole, logp)
    assert torch.allclose(grad_split, grad_whole, atol=1e-12)
    assert masked_mean(advantages, mask * 0).item() == 0.0  # nothing masked in: 0, not NaN
