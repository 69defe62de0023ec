"""``MaskableVariantPPO`` and ``RecurrentVariantPPO``: the options of ``VariantPPO`` on sb3-contrib's PPOs."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from sb3_contrib import MaskablePPO, RecurrentPPO
from sb3_contrib.common.envs import (
    InvalidActionEnvDiscrete,
    InvalidActionEnvMultiBinary,
    InvalidActionEnvMultiDiscrete,
)
from sb3_contrib.common.maskable.distributions import make_masked_proba_distribution
from stable_baselines3.common.env_util import make_vec_env

from sb3_ppo_variants import MaskableVariantPPO, RecurrentVariantPPO, VariantPPO
from sb3_ppo_variants import loss as loss_module
from sb3_ppo_variants.buffers import check_valid_actions
from sb3_ppo_variants.distributions import action_pseudo_entropy, distribution_parameters, exact_kl
from sb3_ppo_variants.objectives import target_ratio
from sb3_ppo_variants.variant_ppo import VARIANT_OPTIONS, VariantAlgorithm

SMALL_NET = dict(net_arch=[16])
SMALL_LSTM = dict(net_arch=[16], lstm_hidden_size=8)
PPO_KEYS = ("train/loss", "train/value_loss", "train/entropy_loss", "train/policy_gradient_loss", "train/approx_kl")

# every option family of VariantPPO, each on its own
OPTIONS = [
    pytest.param(dict(delta_target_policy="logit"), id="logit"),
    pytest.param(dict(peaked_policy_loss=0.3), id="rollback"),
    pytest.param(dict(value_grad_rescaling="smoothed"), id="smoothed"),
    pytest.param(dict(value_grad_rescaling="per_state"), id="per_state"),
    pytest.param(dict(surrogate="spo"), id="spo"),
    pytest.param(dict(surrogate="unclipped", kl_coef=1.0), id="kl_penalty"),
    pytest.param(dict(kl_trust_region=0.03, peaked_policy_loss=5.0), id="truly"),
    pytest.param(dict(clip_range_high=0.28, dual_clip=3.0), id="clip_higher_dual"),
    pytest.param(dict(ratio_change_limit=0.05, ratio_change_stop="after_step"), id="espo"),
    pytest.param(dict(feature_drift_coef=1.0), id="pfo"),
]


def _masked_env(space: str):
    if space == "Discrete":
        return InvalidActionEnvDiscrete(dim=8, ep_length=20, n_invalid_actions=4)
    if space == "MultiDiscrete":
        return InvalidActionEnvMultiDiscrete(dims=[4, 3], ep_length=20, n_invalid_actions=3)
    return InvalidActionEnvMultiBinary(dims=4, ep_length=20, n_invalid_actions=2)


def _assert_same_parameters(reference, variant):
    assert variant._n_updates == reference._n_updates
    for (name, expected), actual in zip(
        reference.policy.state_dict().items(), variant.policy.state_dict().values(), strict=True
    ):
        th.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6, msg=name)
    for key in PPO_KEYS:
        # the surrogate is PPO's written as max(0, A(r' − r)) − A r': float32 rounding differs at about 1e-9
        expected = pytest.approx(reference.logger.name_to_value[key], rel=1e-5, abs=1e-8)
        assert variant.logger.name_to_value[key] == expected, key
    assert variant.logger.name_to_value["train/clip_fraction"] == pytest.approx(
        reference.logger.name_to_value["train/clip_fraction"], rel=1e-6
    )


@pytest.fixture(autouse=True)
def _one_thread():
    th.set_num_threads(1)


# --------------------------------------------------------------------------- the same options everywhere


@pytest.mark.parametrize("cls", [MaskableVariantPPO, RecurrentVariantPPO])
def test_the_options_are_variant_ppos_with_its_defaults_and_its_loop(cls):
    def options(klass):
        parameters = inspect.signature(klass.__init__).parameters.values()
        return {p.name: p.default for p in parameters if p.kind is p.KEYWORD_ONLY and p.name != "_init_setup_model"}

    assert options(cls) == options(VariantPPO)
    assert tuple(options(cls)) == VARIANT_OPTIONS
    assert cls.train is VariantPPO.train is VariantAlgorithm.train
    assert issubclass(cls, MaskablePPO if cls is MaskableVariantPPO else RecurrentPPO)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(value_grad_rescaling="bad"),
        dict(pseudo_entropy_smoothing=1.0),
        dict(surrogate="spo", dual_clip=3.0),
        dict(kl_trust_region=0.03, delta_target_policy="logit"),
        dict(clip_range=1.2, delta_target_policy="logit"),
        dict(ratio_change_stop="after_step"),
        dict(kl_coef=-1.0),
    ],
)
def test_bad_options_raise_variant_ppos_error_at_construction(kwargs):
    with pytest.raises(ValueError) as expected:
        VariantPPO("MlpPolicy", "CartPole-v1", **kwargs)
    with pytest.raises(ValueError) as masked:
        MaskableVariantPPO("MlpPolicy", _masked_env("Discrete"), **kwargs)
    with pytest.raises(ValueError) as recurrent:
        RecurrentVariantPPO("MlpLstmPolicy", "CartPole-v1", **kwargs)
    assert str(masked.value) == str(recurrent.value) == str(expected.value)


@pytest.mark.parametrize("option", [dict(delta_target_policy="logit"), dict(value_grad_rescaling="per_batch")])
def test_an_option_the_box_action_space_refuses_raises_variant_ppos_error(option):
    with pytest.raises(ValueError) as expected:
        VariantPPO("MlpPolicy", "Pendulum-v1", **option)
    with pytest.raises(ValueError, match="needs action probabilities") as recurrent:
        RecurrentVariantPPO("MlpLstmPolicy", "Pendulum-v1", **option)
    assert str(recurrent.value) == str(expected.value)


# --------------------------------------------------------------------------- options off: the contrib classes


@pytest.mark.parametrize("space", ["Discrete", "MultiDiscrete", "MultiBinary"])
def test_default_options_reproduce_maskable_ppo(space):
    kwargs = dict(n_steps=64, batch_size=32, n_epochs=3, learning_rate=3e-3, seed=3, policy_kwargs=SMALL_NET)
    if space == "Discrete":
        kwargs.update(clip_range_vf=0.2, target_kl=0.02, ent_coef=0.01)
    reference = MaskablePPO("MlpPolicy", _masked_env(space), **kwargs).learn(256)
    variant = MaskableVariantPPO("MlpPolicy", _masked_env(space), **kwargs).learn(256)
    _assert_same_parameters(reference, variant)


@pytest.mark.parametrize(("env_id", "extra"), [("CartPole-v1", {}), ("Pendulum-v1", dict(ent_coef=0.01))])
def test_default_options_reproduce_recurrent_ppo(env_id, extra):
    kwargs = dict(n_steps=64, batch_size=48, n_epochs=3, learning_rate=3e-3, seed=3, policy_kwargs=SMALL_LSTM, **extra)
    # each model is seeded at construction and draws its minibatches from the global generator while it learns
    reference = RecurrentPPO("MlpLstmPolicy", make_vec_env(env_id, n_envs=2, seed=3), **kwargs).learn(256)
    variant = RecurrentVariantPPO("MlpLstmPolicy", make_vec_env(env_id, n_envs=2, seed=3), **kwargs).learn(256)
    _assert_same_parameters(reference, variant)


# --------------------------------------------------------------------------- the rollout that records the policy


def _filled_buffer(model, steps: int):
    model._setup_learn(steps, None)
    callback = model._init_callback(None)
    assert model.collect_rollouts(model.env, callback, model.rollout_buffer, model.n_steps)
    return model.rollout_buffer


@pytest.mark.parametrize(
    ("reference_cls", "cls", "env", "policy"),
    [
        (MaskablePPO, MaskableVariantPPO, lambda: _masked_env("MultiDiscrete"), "MlpPolicy"),
        # Pendulum truncates at 200 steps: a timeout bootstraps from the LSTM state of its environment
        (RecurrentPPO, RecurrentVariantPPO, lambda: make_vec_env("Pendulum-v1", n_envs=2, seed=1), "MlpLstmPolicy"),
    ],
)
def test_the_recording_rollout_collects_what_the_contrib_rollout_collects(reference_cls, cls, env, policy):
    kwargs = dict(n_steps=208, seed=1)
    policy_kwargs = SMALL_LSTM if cls is RecurrentVariantPPO else SMALL_NET
    reference_model = reference_cls(policy, env(), policy_kwargs=policy_kwargs, **kwargs)
    reference = _filled_buffer(reference_model, 208)
    model = cls(policy, env(), policy_kwargs=policy_kwargs, kl_coef=1.0, feature_drift_coef=1.0, **kwargs)
    recorded = _filled_buffer(model, 208)
    names = ["observations", "actions", "rewards", "episode_starts", "values", "log_probs", "returns", "advantages"]
    names += ["action_masks"] if cls is MaskableVariantPPO else ["hidden_states_pi", "cell_states_vf"]
    for name in names:
        np.testing.assert_allclose(
            getattr(recorded, name), getattr(reference, name), rtol=1e-5, atol=1e-6, err_msg=name
        )
    assert recorded.old_distribution.any() and recorded.old_features.any()
    if cls is RecurrentVariantPPO:
        # the states carried to the next rollout
        for state, expected in zip(model._last_lstm_states.vf, reference_model._last_lstm_states.vf, strict=True):
            th.testing.assert_close(state, expected)


# --------------------------------------------------------------------------- masks


def test_masked_distribution_by_hand():
    """Invalid actions have probability 0 and add nothing to H', the KL or π_old."""
    distribution = make_masked_proba_distribution(spaces.Discrete(4))
    mask = th.tensor([[True, True, True, False]])
    distribution.proba_distribution(th.tensor([[0.0, math.log(2.0), 0.0, 5.0]]))
    distribution.apply_masking(mask)
    # masked probabilities 1/4, 1/2, 1/4, 0
    assert action_pseudo_entropy(distribution).item() == pytest.approx(1 - (1 / 16 + 4 / 16 + 1 / 16))
    old = distribution_parameters(distribution)
    current = make_masked_proba_distribution(spaces.Discrete(4))
    current.proba_distribution(th.tensor([[1.0, 1.0, 1.0, -3.0]]))
    current.apply_masking(mask)  # 1/3 each on the valid actions
    expected_kl = 0.25 * math.log(0.75) + 0.5 * math.log(1.5) + 0.25 * math.log(0.75)
    assert exact_kl(old, current).item() == pytest.approx(expected_kl, rel=1e-6)
    # π_old of action 0 is the masked 1/4: the logit target for A > 0 is (1 + ε)/(1 + ε(2π_old − 1))
    old_log_prob = distribution.log_prob(th.tensor([0]))
    assert old_log_prob.exp().item() == pytest.approx(0.25)
    ratio = target_ratio(old_log_prob, th.tensor([1.0]), 0.2, "logit")
    assert ratio.item() == pytest.approx(1.2 / (1 + 0.2 * (2 * 0.25 - 1)))


def test_masked_multi_discrete_and_multi_binary_by_hand():
    multi = make_masked_proba_distribution(spaces.MultiDiscrete([3, 2]))
    multi.proba_distribution(th.zeros(1, 5))
    multi.apply_masking(th.tensor([[True, False, True, True, True]]))
    # components uniform over 2 valid of 3, and over 2: H'_i = 1/2 each, joint 1 − (1/2)(1/2)
    assert action_pseudo_entropy(multi).item() == pytest.approx(0.75)
    old = distribution_parameters(multi)
    assert old.shape == (1, 5) and th.softmax(old[:, :3], dim=-1)[0, 1].item() == 0.0
    binary = make_masked_proba_distribution(spaces.MultiBinary(2))
    binary.proba_distribution(th.tensor([[0.0, 0.0, 0.0, math.log(3.0)]]))
    binary.apply_masking(th.tensor([[True, False, True, True]]))
    # component 0 can only be 0 (H' = 0); component 1 has p = 3/4, H' = 2 p (1 − p)
    assert action_pseudo_entropy(binary).item() == pytest.approx(2 * 0.75 * 0.25)
    assert exact_kl(distribution_parameters(binary), binary).item() == pytest.approx(0.0, abs=1e-7)


def test_pi_old_and_the_old_distribution_are_the_masked_rollout_policys():
    env = _masked_env("Discrete")
    model = MaskableVariantPPO("MlpPolicy", env, n_steps=32, kl_coef=1.0, seed=0, policy_kwargs=SMALL_NET)
    buffer = _filled_buffer(model, 32)
    old_probs = th.softmax(th.as_tensor(buffer.old_distribution), dim=-1)
    masks = th.as_tensor(buffer.action_masks).bool()
    assert (old_probs[~masks] == 0).all()
    taken = th.as_tensor(buffer.actions).long()
    np.testing.assert_allclose(old_probs.gather(-1, taken).log().numpy(), buffer.log_probs[..., None], rtol=1e-5)


class _NoValidActionEnv(InvalidActionEnvMultiDiscrete):
    def action_masks(self):
        masks = np.asarray(super().action_masks(), dtype=bool).copy()
        masks[:4] = False  # the first component, all four actions
        return masks


def test_a_mask_without_a_valid_action_is_a_clear_error():
    model = MaskableVariantPPO("MlpPolicy", _NoValidActionEnv(dims=[4, 3]), n_steps=16, policy_kwargs=SMALL_NET)
    with pytest.raises(ValueError, match=r"environment 0 leaves no valid action in component 0"):
        model.learn(16)
    check_valid_actions(np.ones((2, 4)), spaces.Discrete(4), n_envs=2)
    with pytest.raises(ValueError, match="environment 1 leaves no valid action; every state"):
        check_valid_actions(np.array([[1, 0, 0], [0, 0, 0]]), spaces.Discrete(3), n_envs=2)
    with pytest.raises(ValueError, match="component 1 of MultiBinary"):
        check_valid_actions(np.array([[1, 0, 0, 0]]), spaces.MultiBinary(2), n_envs=1)


# --------------------------------------------------------------------------- recurrent padding


def test_padded_steps_reach_the_loss_as_its_mask(monkeypatch):
    seen = []

    def spy(options, evaluation, minibatch, average=None):
        seen.append((minibatch.mask, len(evaluation.values), evaluation.kl, evaluation.features))
        return loss_module.variant_ppo_loss(options, evaluation, minibatch, average)

    monkeypatch.setattr("sb3_ppo_variants.variant_ppo.variant_ppo_loss", spy)
    model = RecurrentVariantPPO(
        "MlpLstmPolicy",
        make_vec_env("CartPole-v1", n_envs=2, seed=0),
        n_steps=64,
        batch_size=48,
        n_epochs=1,
        seed=0,
        policy_kwargs=SMALL_LSTM,
        kl_coef=1.0,
        feature_drift_coef=1.0,
        value_grad_rescaling="smoothed",
    )
    model.learn(128)
    assert any((~mask).any() for mask, *_ in seen), "no minibatch had padding"
    for mask, size, kl, features in seen:
        assert mask.dtype == th.bool and len(mask) == size == len(kl) == len(features)
        assert th.isfinite(kl).all()
    # statistics over unpadded steps only: the logged KL is the mean over the last epoch's real steps
    assert math.isfinite(model.logger.name_to_value["train/kl"])
    assert math.isfinite(model._pseudo_entropy_average)


# --------------------------------------------------------------------------- every option trains on both


@pytest.mark.parametrize("options", OPTIONS)
def test_every_option_trains_maskable(options):
    env = _masked_env("Discrete")
    model = MaskableVariantPPO("MlpPolicy", env, n_steps=32, batch_size=16, n_epochs=2, seed=0, **options)
    model.learn(64)
    assert all(th.isfinite(p).all() for p in model.policy.parameters())
    assert "train/pseudo_entropy" in model.logger.name_to_value


@pytest.mark.parametrize("options", OPTIONS)
def test_every_option_trains_recurrent(options):
    model = RecurrentVariantPPO(
        "MlpLstmPolicy",
        make_vec_env("CartPole-v1", n_envs=2, seed=0),
        n_steps=32,
        batch_size=24,
        n_epochs=2,
        seed=0,
        policy_kwargs=SMALL_LSTM,
        **options,
    )
    model.learn(128)
    assert all(th.isfinite(p).all() for p in model.policy.parameters())


@pytest.mark.parametrize("space", ["MultiDiscrete", "MultiBinary"])
def test_exact_kl_and_logit_target_train_on_multi_masks(space):
    model = MaskableVariantPPO(
        "MlpPolicy", _masked_env(space), n_steps=32, batch_size=16, seed=0, kl_coef=1.0, delta_target_policy="logit"
    )
    model.learn(64)
    assert math.isfinite(model.logger.name_to_value["train/kl"])


def test_the_logged_keys_are_variant_ppos():
    options = dict(kl_trust_region=0.03, value_grad_rescaling="per_batch", feature_drift_coef=1.0)
    kwargs = dict(n_steps=32, batch_size=16, n_epochs=2, seed=0)
    reference = VariantPPO("MlpPolicy", "CartPole-v1", **kwargs, **options).learn(32)
    masked = MaskableVariantPPO("MlpPolicy", _masked_env("Discrete"), **kwargs, **options).learn(32)
    recurrent = RecurrentVariantPPO("MlpLstmPolicy", "CartPole-v1", **kwargs, **options).learn(32)
    train_keys = {key for key in reference.logger.name_to_value if key.startswith("train/")}
    for model in (masked, recurrent):
        assert {key for key in model.logger.name_to_value if key.startswith("train/")} == train_keys


# --------------------------------------------------------------------------- save and load


@pytest.mark.parametrize("cls", [MaskableVariantPPO, RecurrentVariantPPO])
def test_save_and_load_keep_every_option_and_running_state(cls, tmp_path):
    options = dict(
        value_grad_rescaling="smoothed",
        pseudo_entropy_smoothing=0.9,
        kl_coef=0.5,
        kl_penalty_target=0.002,
        clip_range_high="lin_0.3",
        dual_clip=2.5,
        ratio_change_limit=0.4,
        feature_drift_coef=0.5,
    )
    if cls is MaskableVariantPPO:
        model = cls("MlpPolicy", _masked_env("Discrete"), n_steps=32, batch_size=16, seed=0, **options)
    else:
        env = make_vec_env("CartPole-v1", n_envs=2, seed=0)
        model = cls("MlpLstmPolicy", env, n_steps=32, batch_size=24, seed=0, policy_kwargs=SMALL_LSTM, **options)
    model.learn(64)
    assert model.kl_coef != 0.5 and model._pseudo_entropy_average is not None
    model.save(tmp_path / "model")
    loaded = cls.load(tmp_path / "model", env=model.get_env())
    assert loaded.variant_options() == model.variant_options()
    assert loaded._pseudo_entropy_average == model._pseudo_entropy_average
    assert loaded._clip_range_high_schedule(0.5) == pytest.approx(0.15)
    assert loaded.rollout_buffer.old_distribution.shape[-1] > 0 and loaded._preactivations is not None
    for expected, actual in zip(model.policy.state_dict().values(), loaded.policy.state_dict().values(), strict=True):
        th.testing.assert_close(actual, expected)
    loaded.learn(32, reset_num_timesteps=False)
    assert loaded._n_updates > model._n_updates


def test_observation_dicts_reach_the_recording_buffers():
    from stable_baselines3.common.envs import SimpleMultiObsEnv

    class MaskedDictEnv(SimpleMultiObsEnv):
        def action_masks(self):
            return [True, True, False, True]

    masked = MaskableVariantPPO("MultiInputPolicy", MaskedDictEnv(), n_steps=32, batch_size=16, kl_coef=1.0)
    masked.learn(32)
    recurrent = RecurrentVariantPPO(
        "MultiInputLstmPolicy", SimpleMultiObsEnv(), n_steps=32, batch_size=16, kl_coef=1.0, policy_kwargs=SMALL_LSTM
    )
    recurrent.learn(32)
    assert type(masked.rollout_buffer).__name__ == "MaskableDictRolloutPolicyBuffer"
    assert type(recurrent.rollout_buffer).__name__ == "RecurrentDictRolloutPolicyBuffer"


# --------------------------------------------------------------------------- learning, with the logit target


@pytest.mark.slow
def test_maskable_logit_learns_sb3_contribs_masked_identity_task():
    from sb3_contrib.common.maskable.evaluation import evaluate_policy

    # sb3-contrib's MaskablePPO test_identity: its settings and its budget of 2048 steps. A random policy scores
    # about 6 and an unmasked one about 30 there; MaskablePPO gets 85.3 and 88.6 with these seeds.
    scores = []
    for seed in (1, 2):
        env = InvalidActionEnvDiscrete(dim=70, n_invalid_actions=55)
        model = MaskableVariantPPO(
            "MlpPolicy", env, gamma=0.1, seed=seed, clip_range=0.4, n_epochs=2, delta_target_policy="logit"
        )
        model.learn(2048)
        scores.append(evaluate_policy(model, env, n_eval_episodes=20, warn=False)[0])
    assert sum(scores) / len(scores) >= 80, scores


def _recurrent_logit_score(seed: int, timesteps: int = 30_720) -> float:
    """One seed of the recurrent learning test (one torch thread)."""
    import rl_zoo3.import_envs  # noqa: F401  (registers CartPoleNoVel-v1)
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.vec_env import VecNormalize

    th.set_num_threads(1)
    env = VecNormalize(make_vec_env("CartPoleNoVel-v1", n_envs=8, seed=seed))
    model = RecurrentVariantPPO(
        "MlpLstmPolicy",
        env,
        n_steps=128,
        learning_rate=7e-4,
        batch_size=256,
        seed=seed,
        n_epochs=10,
        max_grad_norm=1,
        gae_lambda=0.98,
        policy_kwargs=dict(net_arch=dict(vf=[64], pi=[]), lstm_hidden_size=64, ortho_init=False),
        delta_target_policy="logit",
    )
    model.learn(timesteps)
    env.training, env.norm_reward = False, False
    return float(evaluate_policy(model, env, n_eval_episodes=20)[0])


@pytest.mark.slow
def test_recurrent_logit_learns_cartpole_without_velocities():
    # sb3-contrib's RecurrentPPO test_ppo_lstm_performance: its settings (reward 450 of 500 there after 50k
    # steps); a policy without memory gets about 50 on this task. After 50k steps seeds 1 and 2 scored 500 and
    # 425 (2026-12); evaluated along the way, seeds 1, 2 and 3 scored 500, 459 and 184 after 20,480 steps and
    # 500 each after 30,720. Another CPU of the same family rounds differently, and the same seeds after 30,720
    # steps scored 279.6, 349.0 and 468.4 there: the bar is three times the memoryless score, not a fraction of
    # the best. The test trains seed 1 for 30,720 steps (about two and a half CPU-minutes).
    threads = th.get_num_threads()
    try:
        score = _recurrent_logit_score(1)
    finally:
        th.set_num_threads(threads)
    assert score >= 150, score
