"""Float64 numpy references for the losses in rlr.losses, written loop-style from the
papers' formulas and independent of the jax code. Masks are right-padded: row b is valid
on its first sum(mask[b]) tokens.
"""
import math

import numpy as np


def row_lengths(mask: np.ndarray) -> list[int]:
    """Valid length of each right-padded row; fails on a mask that is not right-padded."""
    lengths = []
    for row in np.asarray(mask, bool):
        n = int(row.sum())
        assert row[:n].all(), "reference_np expects right-padded masks"
        lengths.append(n)
    return lengths


def gae_np(rewards, values, mask, gamma, lam):
    """GAE per row, backwards from the last valid token; V after it is 0; padding 0."""
    rewards, values = np.asarray(rewards, np.float64), np.asarray(values, np.float64)
    adv = np.zeros_like(rewards)
    ret = np.zeros_like(rewards)
    for b, n in enumerate(row_lengths(mask)):
        running = 0.0
        for t in reversed(range(n)):
            next_value = values[b, t + 1] if t + 1 < n else 0.0
            delta = rewards[b, t] + gamma * next_value - values[b, t]
            running = delta + gamma * lam * running
            adv[b, t] = running
            ret[b, t] = running + values[b, t]
    return adv, ret


def aggregate_np(per_token, mask, mode):
    """token_mean / seq_mean / seq_mean_token_sum over valid tokens; empty rows skipped."""
    lengths = row_lengths(mask)
    if mode == "token_mean":
        total, count = 0.0, 0
        for b, n in enumerate(lengths):
            for t in range(n):
                total += per_token[b, t]
                count += 1
        return total / count if count else 0.0
    seq_values = []
    for b, n in enumerate(lengths):
        if n == 0:
            continue
        s = sum(float(per_token[b, t]) for t in range(n))
        seq_values.append(s / n if mode == "seq_mean" else s)
    return sum(seq_values) / len(seq_values) if seq_values else 0.0


def token_mean_np(x, mask):
    return aggregate_np(np.asarray(x, np.float64), mask, "token_mean")


def policy_loss_np(logp, old_logp, adv, mask, clip_eps, dual_clip=None, aggregation="token_mean"):
    """PPO clipped surrogate (optionally dual-clipped) and its metrics, token by token."""
    logp, old_logp, adv = (np.asarray(a, np.float64) for a in (logp, old_logp, adv))
    per_token = np.zeros_like(logp)
    clipped_flag = np.zeros_like(logp)
    ratios = np.zeros_like(logp)
    kl = np.zeros_like(logp)
    for b, n in enumerate(row_lengths(mask)):
        for t in range(n):
            ratio = math.exp(logp[b, t] - old_logp[b, t])
            a = adv[b, t]
            unclipped = -a * ratio
            clipped = -a * min(max(ratio, 1 - clip_eps), 1 + clip_eps)
            loss = max(unclipped, clipped)
            if dual_clip is not None and a < 0:
                loss = min(loss, -dual_clip * a)
            per_token[b, t] = loss
            clipped_flag[b, t] = float(clipped > unclipped)
            ratios[b, t] = ratio
            kl[b, t] = ratio - 1 - math.log(ratio)
    loss = aggregate_np(per_token, mask, aggregation)
    metrics = {
        "policy_loss": loss,
        "clip_fraction": token_mean_np(clipped_flag, mask),
        "approx_kl": token_mean_np(kl, mask),
        "ratio_mean": token_mean_np(ratios, mask),
    }
    return loss, metrics


def value_loss_np(values, old_values, returns, mask, clip_eps=None, aggregation="token_mean"):
    """0.5 * max((v - R)^2, (clip(v, old - eps, old + eps) - R)^2) and explained variance."""
    values, old_values, returns = (np.asarray(a, np.float64) for a in (values, old_values, returns))
    per_token = np.zeros_like(values)
    v_list, r_list = [], []
    for b, n in enumerate(row_lengths(mask)):
        for t in range(n):
            v, old, r = values[b, t], old_values[b, t], returns[b, t]
            loss = (v - r) ** 2
            if clip_eps is not None:
                loss = max(loss, (min(max(v, old - clip_eps), old + clip_eps) - r) ** 2)
            per_token[b, t] = 0.5 * loss
            v_list.append(v)
            r_list.append(r)
    v_arr, r_arr = np.array(v_list), np.array(r_list)
    var_r = float(np.var(r_arr)) if len(r_arr) else 0.0
    ev = 1.0 - float(np.var(r_arr - v_arr)) / var_r if var_r > 1e-8 else 0.0
    return aggregate_np(per_token, mask, aggregation), {"explained_variance": ev}


def normalize_advantages_np(adv, mask, eps=1e-8):
    """(A - mean) / sqrt(var + eps) over the valid entries (population var); padding 0."""
    adv = np.asarray(adv, np.float64)
    m = np.asarray(mask, bool)
    valid = adv[m]
    out = np.zeros_like(adv)
    out[m] = (valid - valid.mean()) / np.sqrt(valid.var() + eps)
    return out


def _neg_log_sigmoid(z):
    return float(np.logaddexp(0.0, -z))


def dpo_loss_np(pc, pr, rc, rr, beta, kind="sigmoid", label_smoothing=0.0):
    """Mean DPO-family loss over pairs and the reward metrics, pair by pair."""
    losses, chosen, rejected = [], [], []
    for i in range(len(pc)):
        h = (float(pc[i]) - float(rc[i])) - (float(pr[i]) - float(rr[i]))
        eps = label_smoothing
        if kind == "sigmoid":
            loss = _neg_log_sigmoid(beta * h)
        elif kind == "cdpo":
            loss = (1 - eps) * _neg_log_sigmoid(beta * h) + eps * _neg_log_sigmoid(-beta * h)
        elif kind == "robust":
            loss = ((1 - eps) * _neg_log_sigmoid(beta * h) - eps * _neg_log_sigmoid(-beta * h)) / (1 - 2 * eps)
        elif kind == "ipo":
            loss = (h - 1 / (2 * beta)) ** 2
        elif kind == "hinge":
            loss = max(0.0, 1 - beta * h)
        else:
            raise ValueError(kind)
        losses.append(loss)
        chosen.append(beta * (float(pc[i]) - float(rc[i])))
        rejected.append(beta * (float(pr[i]) - float(rr[i])))
    chosen, rejected = np.array(chosen), np.array(rejected)
    metrics = {
        "rewards/chosen": chosen.mean(),
        "rewards/rejected": rejected.mean(),
        "rewards/margin": (chosen - rejected).mean(),
        "rewards/accuracy": (chosen > rejected).mean(),
    }
    return float(np.mean(losses)), metrics
