"""Tests of the pure pieces of PPO: host scoring of decoded responses (hand values), the jitted
rollout scoring (log-probs, values, ORM / PRM scores read at the right slots against a forward
pass of each unpadded sequence; shaped rewards, GAE and value normalisation against float64
numpy; GRPO / RLOO group advantages) and the jitted update (minibatch shuffles, first ratio 1,
the surrogate and the value fit improve, EMA reference). One device; tiny models."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

import reference_np as ref
from rlr.data.synthetic import final_answer_correct
from rlr.data.tokenizer import CharTokenizer
from rlr.losses.ppo import RunningMeanStd
from rlr.models import Transformer, get_config, lm_head_weight
from rlr.parallel import make_mesh
from rlr.rewards.shaping import RewardSpec
from rlr.sampling import Rollout
from rlr.train import ppo, sequences
from rlr.train.optim import OptimConfig, make_optimizer
from rlr.train.ppo_step import UpdateConfig, critic_objective, minibatch_rows, ppo_update
from rlr.train.rollout_scoring import Models, ScoringConfig, host_scores
from rlr.train.state import create_train_state

TOK = CharTokenizer()
QUESTIONS = ["(1+2)*3", "4+5"]  # different lengths: the second prompt is left-padded
RESPONSES = ["1+2=3\n3*3=9\nanswer: 9", "1+2=3\n1+2=3\nanswer: 8",  # prompt 0, n = 2
             "4+5=9\nanswer: 9", "4+5=9\n9"]  # prompt 1
N, GROUP, K = 4, 2, 4
CONFIG = get_config("tiny")
LM, SCORE = Transformer(CONFIG), Transformer(CONFIG, head="score")


def init(model, seed):
    """Random params of `model` made on the host (no compiled init): N(0, 0.05^2) kernels and
    embeddings, norm scales around 1."""
    tokens = jnp.zeros((1, 8), jnp.int32)
    shapes = jax.eval_shape(lambda: nn.meta.unbox(
        model.init(jax.random.key(0), tokens, tokens, jnp.ones((1, 8), bool))["params"]))
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        x = 0.05 * rng.normal(size=leaf.shape)
        return jnp.asarray(x + (path[-1].key == "scale"), leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.fixture(scope="module")
def rollout():
    """The Rollout of RESPONSES (eos included, right-padded) to the repeated QUESTIONS."""
    prompts = [sequences.prompt_text(TOK, q) for q in QUESTIONS]
    prompt_tokens, prompt_mask = sequences.encode_prompts(TOK, prompts, bucket=8)
    response_tokens, response_mask = sequences.encode_responses(TOK, RESPONSES, bucket=8)
    rows = np.repeat(np.arange(2), GROUP)
    return Rollout(jnp.asarray(prompt_tokens[rows]), jnp.asarray(prompt_mask[rows]),
                   jnp.asarray(response_tokens), jnp.asarray(response_mask),
                   jnp.zeros(response_tokens.shape, jnp.float32),
                   jnp.asarray(response_mask.sum(1), jnp.int32))


@pytest.fixture(scope="module")
def host(rollout):
    success_fn = lambda question, text: final_answer_correct(question, text)  # noqa: E731
    refs = [q for q in QUESTIONS for _ in range(GROUP)]
    return host_scores(TOK, np.asarray(rollout.response_tokens), np.asarray(rollout.response_mask),
                       refs, success_fn, K)


# ----------------------------------------------------------------------------- host side


def test_host_scores_hand_values(host):
    scores, text = host
    assert text.responses == RESPONSES
    np.testing.assert_array_equal(scores.success, [1, 0, 1, 0])  # wrong answer; no answer line
    np.testing.assert_array_equal(text.num_steps, [3, 3, 2, 2])
    np.testing.assert_allclose(text.repetition, [0, 0.5, 0, 0])  # "1+2=3" twice of 2 steps
    # One token a character: a step ends at its delimiter's index, the last one at its last char.
    np.testing.assert_array_equal(scores.step_positions, [[5, 11, 20, 0], [5, 11, 20, 0],
                                                          [5, 14, 0, 0], [5, 6, 0, 0]])
    np.testing.assert_array_equal(scores.step_mask.sum(1), [3, 3, 2, 2])
    np.testing.assert_array_equal(text.invalid_tokens, 0)


def test_host_scores_decodes_ids_outside_the_tokenizer_as_nothing():
    tokens = np.array([TOK.encode("7") + [200] + TOK.encode("\n8") + [TOK.eos_id, 0]])
    mask = np.array([[1, 1, 1, 1, 1, 0]], bool)
    scores, text = host_scores(TOK, tokens, mask, ["x"], None, 3)
    assert text.responses == ["7\n8"] and text.invalid_tokens.tolist() == [1]
    np.testing.assert_array_equal(scores.step_positions[0, :2], [2, 3])  # the bad id keeps its slot
    np.testing.assert_array_equal(scores.success, [0])  # no checker: success 0
    with pytest.raises(ValueError, match="2 references for 1 rows"):
        host_scores(TOK, tokens, mask, ["x", "y"], None, 3)


# ----------------------------------------------------------------------------- device side


@jax.jit
def _forward_lm(params, tokens, positions, mask):
    hidden, _ = LM.apply({"params": params}, tokens, positions, mask)
    return jax.nn.log_softmax(hidden @ lm_head_weight(params, CONFIG), axis=-1)


@jax.jit
def _forward_score(params, tokens, positions, mask):
    return SCORE.apply({"params": params}, tokens, positions, mask)[0]


def unpadded(rollout):
    """Every row's prompt + response with no padding before it (right-padded only, which a
    causal model never sees): (tokens, positions, mask) [N, P + R], prompt lengths, responses."""
    rows, lengths, responses = [], [], []
    for row in range(N):
        p = np.asarray(rollout.prompt_tokens[row])[np.asarray(rollout.prompt_mask[row])]
        r = np.asarray(rollout.response_tokens[row])[np.asarray(rollout.response_mask[row])]
        rows.append(np.concatenate([p, r]))
        lengths.append(len(p))
        responses.append(r)
    width = rollout.prompt_tokens.shape[1] + rollout.response_tokens.shape[1]
    tokens = np.zeros((N, width), np.int32)
    mask = np.zeros((N, width), bool)
    for i, seq in enumerate(rows):
        tokens[i, :len(seq)], mask[i, :len(seq)] = seq, True
    positions = np.broadcast_to(np.arange(width, dtype=np.int32), (N, width))
    return (tokens, positions, mask), lengths, responses


def clip_delta_np(s, eta):
    """Clip then Delta of one row's valid step scores (Gao et al. 2024), float64."""
    c = np.minimum(np.asarray(s, np.float64) - eta, 0.0)
    m = len(c)
    r = np.zeros(m)
    for j in range(m):
        r[j] = c[j] - c[j + 1] if j < m - 2 else (c[j] if j == m - 2 else 0.0)
    return r


@pytest.fixture(scope="module")
def gae_scored(rollout, host):
    """(params, scored) of a GAE rollout scoring with every model: ORM, PRM (Clip-Delta), KL in
    the reward, value normalisation from non-trivial running statistics."""
    params = {"policy": init(LM, 0), "ref": init(LM, 1), "critic": init(SCORE, 2),
              "orm": init(SCORE, 3), "prm": init(SCORE, 4)}
    spec = RewardSpec(success_weight=1.0, orm_weight=0.5, prm_weight=0.7, prm_transform="clip_delta",
                      prm_eta=0.6, kl_coef=0.1)
    config = ScoringConfig(advantage="gae", gamma=0.9, gae_lambda=0.8, group_size=GROUP,
                           value_norm=True)
    stats = RunningMeanStd(jnp.float32(10.0), jnp.float32(0.5), jnp.float32(4.0))
    out = ppo.score(params, rollout, jax.tree.map(jnp.asarray, host[0]), stats,
                    models=Models(LM, SCORE, SCORE, SCORE), spec=spec, config=config)
    return params, out


def test_score_rollout_gae_matches_unpadded_forwards_and_numpy(rollout, host, gae_scored):
    params, out = gae_scored
    scores, _ = host
    b = out.batch
    mask = np.asarray(rollout.response_mask)
    R = mask.shape[1]
    rewards = np.zeros((N, R))
    values, critic_out = np.zeros((N, R)), np.zeros((N, R))
    inputs, prompt_lengths, responses = unpadded(rollout)
    logp, ref_logp = (np.asarray(_forward_lm(params[k], *inputs)) for k in ("policy", "ref"))
    critic, orm, prm = (np.asarray(_forward_score(params[k], *inputs), np.float64)
                        for k in ("critic", "orm", "prm"))
    for row, (p, resp) in enumerate(zip(prompt_lengths, responses)):
        t = np.arange(len(resp))  # y_t sits at p + t, is predicted (and valued) from p + t - 1
        old, refl = logp[row, p - 1 + t, resp], ref_logp[row, p - 1 + t, resp]
        np.testing.assert_allclose(np.asarray(b.old_logp[row, :len(resp)]), old, atol=2e-5)
        np.testing.assert_allclose(np.asarray(b.ref_logp[row, :len(resp)]), refl, atol=2e-5)
        critic_out[row, :len(resp)] = critic[row, p - 1 + t]
        values[row, :len(resp)] = critic_out[row, :len(resp)] * np.sqrt(4.0 + 1e-8) + 0.5
        positions = scores.step_positions[row][scores.step_mask[row]]
        s = 1 / (1 + np.exp(-prm[row, p + positions]))
        rewards[row, :len(resp)] -= 0.1 * (old - refl)
        last = p + len(resp) - 1
        rewards[row, len(resp) - 1] += scores.success[row] + 0.5 / (1 + np.exp(-orm[row, last]))
        np.add.at(rewards[row], positions, 0.7 * clip_delta_np(s, 0.6))
    np.testing.assert_allclose(np.asarray(b.old_values), critic_out, atol=2e-5)  # normalised
    np.testing.assert_allclose(np.asarray(out.token_rewards), rewards, atol=2e-5)
    adv, returns = ref.gae_np(rewards, values, mask, 0.9, 0.8)
    np.testing.assert_allclose(np.asarray(b.returns), returns, atol=1e-4)
    np.testing.assert_allclose(np.asarray(b.advantages), ref.normalize_advantages_np(adv, mask),
                               atol=1e-4)
    seen = np.concatenate([np.full(10, 0.5) + 2.0 * np.array([1, -1] * 5), returns[mask]])
    np.testing.assert_allclose([float(out.value_stats.mean), float(out.value_stats.var)],
                               [seen.mean(), seen.var()], rtol=1e-5)
    assert float(out.value_stats.count) == 10 + mask.sum()
    np.testing.assert_allclose(float(out.metrics["accuracy"]), 0.5)
    np.testing.assert_allclose(float(out.metrics["reward/total"]), rewards.sum(1).mean(), atol=1e-5)


def test_value_clip_is_centred_on_the_critics_rollout_output(gae_scored):
    """With value normalisation the clip's centre is the critic's rollout-time output in its own
    (normalised) units, so before the critic's first step no token is clipped and the clipped
    loss has the unclipped one's gradient. (Until 2026-12-07 the centre was V_old renormalised
    with the statistics this batch's returns had updated: here 57% of the tokens clipped.)"""
    params, scored = gae_scored

    def loss(critic, clip_eps):
        config = UpdateConfig(value_norm=True, value_clip_eps=clip_eps)
        return critic_objective(critic, scored.batch, scored.value_stats, SCORE, config)

    grad = jax.jit(jax.grad(loss, has_aux=True), static_argnums=1)
    clipped, metrics = grad(params["critic"], 0.2)
    unclipped, _ = grad(params["critic"], None)
    assert float(metrics["value_clip_fraction"]) == 0.0
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                 clipped, unclipped)


@pytest.mark.parametrize("row_slices", [2, 4])
def test_score_rollout_in_row_slices_equals_one_pass(rollout, host, gae_scored, row_slices):
    params, whole = gae_scored  # checked against numpy above
    config = ScoringConfig(advantage="gae", gamma=0.9, gae_lambda=0.8, group_size=GROUP,
                           value_norm=True, row_slices=row_slices)
    stats = RunningMeanStd(jnp.float32(10.0), jnp.float32(0.5), jnp.float32(4.0))
    spec = RewardSpec(success_weight=1.0, orm_weight=0.5, prm_weight=0.7, prm_transform="clip_delta",
                      prm_eta=0.6, kl_coef=0.1)
    sliced = ppo.score(params, rollout, jax.tree.map(jnp.asarray, host[0]), stats,
                       models=Models(LM, SCORE, SCORE, SCORE), spec=spec, config=config)
    # Equal within float32 rounding (a matmul over fewer rows may round differently).
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5,
                                                         atol=1e-5), sliced, whole)


def test_map_row_slices_takes_every_kth_row_and_restores_the_order():
    mesh = make_mesh(data=4, fsdp=2, tensor=1)
    x = jax.device_put(np.arange(32 * 3, dtype=np.float32).reshape(32, 3),
                       NamedSharding(mesh, PartitionSpec(("data", "fsdp"), None)))
    # Not row-wise on purpose: each row minus its slice's mean shows which rows share a slice.
    out = jax.jit(lambda v: sequences.map_row_slices(lambda s: s - s.mean(axis=0), v, 4))(x)
    expected = np.asarray(x).copy()
    for k in range(4):
        expected[k::4] -= expected[k::4].mean(axis=0)
    np.testing.assert_allclose(np.asarray(out), expected, atol=1e-5)
    assert out.sharding.is_equivalent_to(x.sharding, 2)
    square = sequences.map_row_slices(lambda s: {"sq": s ** 2}, x, 8)  # row-wise: the same as whole
    np.testing.assert_array_equal(np.asarray(square["sq"]), np.asarray(x) ** 2)


def test_score_rollout_grpo_group_advantages(rollout, host):
    advantage = "grpo"
    params = {"policy": init(LM, 0), "ref": init(LM, 0)}  # ref == policy: KL exactly 0
    config = ScoringConfig(advantage=advantage, group_size=GROUP, normalize_advantages=False)
    scores, _ = host
    out = ppo.score(params, rollout, jax.tree.map(jnp.asarray, scores), None,
                    models=Models(LM), spec=RewardSpec(kl_coef=0.1), config=config)
    assert float(out.metrics["kl"]) == 0.0 and out.value_stats is None
    success = scores.success.reshape(-1, GROUP).astype(np.float64)  # [[1, 0], [1, 0]]
    seq = (success - success.mean(1, keepdims=True)) / (success.std(1, keepdims=True) + 1e-6)
    mask = np.asarray(rollout.response_mask)
    np.testing.assert_allclose(np.asarray(out.batch.advantages), seq.reshape(-1, 1) * mask, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(out.batch.returns), 0.0)


# ----------------------------------------------------------------------------- the update


def test_minibatch_rows_are_permutations_per_epoch():
    rows = np.asarray(minibatch_rows(jax.random.key(0), 12, epochs=3, num_minibatches=4))
    assert rows.shape == (12, 3)
    for epoch in range(3):
        assert sorted(rows[4 * epoch:4 * epoch + 4].ravel()) == list(range(12))
    assert not np.array_equal(rows[:4], rows[4:8])  # a fresh shuffle each epoch
    with pytest.raises(ValueError, match="num_minibatches=5 must divide"):
        minibatch_rows(jax.random.key(0), 12, epochs=1, num_minibatches=5)


def test_update_improves_surrogate_and_value_fit_and_moves_the_ema_reference(rollout, gae_scored):
    params, scored = gae_scored
    batch = scored.batch
    optim = OptimConfig(learning_rate=3e-3, schedule="constant")
    config = UpdateConfig(epochs=2, num_minibatches=2, logprob_chunk=8)
    copy = lambda tree: jax.tree.map(jnp.copy, tree)  # noqa: E731  (the update donates its state)
    state = {"policy": create_train_state(copy(params["policy"]), make_optimizer(optim),
                                          jax.random.key(5)),
             "critic": create_train_state(copy(params["critic"]), make_optimizer(optim),
                                          jax.random.key(6)),
             "ref": copy(params["ref"])}
    state, metrics = ppo.update(state, batch, None, jax.random.key(7), models=Models(LM, SCORE),
                                policy_optim=optim, critic_optim=optim, config=config,
                                ref_decay=0.75, mesh=None)
    assert int(state["policy"].step) == int(state["critic"].step) == 4  # epochs x minibatches
    assert float(metrics["policy/first_log_ratio_max"]) < 1e-5  # old log-probs by teacher forcing
    inputs, prompt_lengths, responses = unpadded(rollout)
    advantages, returns = np.asarray(batch.advantages), np.asarray(batch.returns)

    def surrogate(policy):  # sum_t A_t log pi(y_t): what the clipped objective pushes up first
        logp = np.asarray(_forward_lm(policy, *inputs))
        return sum(np.sum(advantages[i, :len(r)] * logp[i, p - 1 + np.arange(len(r)), r])
                   for i, (p, r) in enumerate(zip(prompt_lengths, responses)))

    def value_error(critic):  # the critic's targets are the raw returns (no value normalisation)
        values = np.asarray(_forward_score(critic, *inputs))
        return sum(np.sum((values[i, p - 1:p - 1 + len(r)] - returns[i, :len(r)]) ** 2)
                   for i, (p, r) in enumerate(zip(prompt_lengths, responses)))

    assert surrogate(state["policy"].params) > surrogate(params["policy"]) + 1e-3
    assert value_error(state["critic"].params) < value_error(params["critic"])
    expected = jax.tree.map(lambda r, p: 0.75 * np.asarray(r) + 0.25 * np.asarray(p),
                            params["ref"], state["policy"].params)
    jax.tree.map(lambda a, e: np.testing.assert_allclose(np.asarray(a), e, atol=1e-6),
                 state["ref"], expected)
    with pytest.raises(ValueError, match="use_critic=True but a critic state was not given"):
        ppo_update(state["policy"], None, None, batch, jax.random.key(0), policy_model=LM,
                   critic_model=None, policy_optim=optim, critic_optim=None, config=config)
