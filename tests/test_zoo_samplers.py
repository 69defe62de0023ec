"""Optuna samplers and converters: the zoo's PPO space plus each algorithm's own options, all constructible."""

import optuna
import pytest
from gymnasium import spaces
from rl_zoo3.hyperparams_opt import sample_ppo_params

import sb3_ppo_variants
from sb3_ppo_variants.zoo import ALGORITHM_CLASS_NAMES
from sb3_ppo_variants.zoo.samplers import CONVERTERS, SAMPLERS, convert_variant_options
from sb3_ppo_variants.zoo.validation import check_constructor_arguments

IDS = sorted(ALGORITHM_CLASS_NAMES)
OBSERVATIONS = spaces.Box(-1.0, 1.0, (4,))
ACTION_SPACES = {"discrete": (spaces.Discrete(3), 0), "box": (spaces.Box(-1.0, 1.0, (2,)), 2)}
ACCEPTS_BOX = {"ppo_variant", "ppo_peaked", "ppo_spo", "ppo_kl", "ppo_truly", "ppo_dual_clip", "ppo_lstm_variant"}
POLICIES = {"ppo_lstm_variant": "MlpLstmPolicy"}
N_TRIALS = 60


def _zoo_ppo_param_names() -> set[str]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    sample_ppo_params(trial, 0, 1, {})
    return set(trial.params)


ZOO_PPO_PARAMS = _zoo_ppo_param_names()


def _sampled(algo_id, kind, n_trials=N_TRIALS, seed=0):
    """(trial.params, sampler output) for ``n_trials`` random trials."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    n_actions = ACTION_SPACES[kind][1]
    for _ in range(n_trials):
        trial = study.ask()
        hyperparams = SAMPLERS[algo_id](trial, n_actions, 4, {"using_her_replay_buffer": False, "her_kwargs": {}})
        yield dict(trial.params), hyperparams


def _cases():
    for algo_id in IDS:
        for kind in ACTION_SPACES:
            if kind == "box" and algo_id not in ACCEPTS_BOX:
                continue
            yield pytest.param(algo_id, kind, id=f"{algo_id}-{kind}")


@pytest.mark.parametrize(("algo_id", "kind"), list(_cases()))
def test_every_sample_is_accepted_by_the_class_and_reproduced_by_the_converter(algo_id, kind):
    algorithm = getattr(sb3_ppo_variants, ALGORITHM_CLASS_NAMES[algo_id])
    action_space = ACTION_SPACES[kind][0]
    for params, hyperparams in _sampled(algo_id, kind):
        assert ZOO_PPO_PARAMS - {"clip_range"} <= set(params)
        # --trial-id rebuilds the constructor arguments from trial.params alone
        assert CONVERTERS[algo_id](params) == hyperparams
        policy = POLICIES.get(algo_id, "MlpPolicy")
        check_constructor_arguments(algorithm, {"policy": policy, **hyperparams}, OBSERVATIONS, action_space, 4)


def test_variant_sampler_combines_every_modification_on_discrete_actions():
    seen: dict[str, set] = {}
    for _, hyperparams in _sampled("ppo_variant", "discrete", n_trials=300):
        for key in ("value_grad_rescaling", "delta_target_policy", "surrogate"):
            seen.setdefault(key, set()).add(hyperparams[key])
        seen.setdefault("peaked", set()).add(hyperparams.get("peaked_policy_loss", False) is not False)
        seen.setdefault("kl_penalty", set()).add(hyperparams["kl_coef"] > 0)
        for option in ("clip_range_high", "dual_clip", "kl_trust_region", "ratio_change_limit", "feature_drift_coef"):
            seen.setdefault(option, set()).add(option in hyperparams)
        if "kl_trust_region" in hyperparams:
            assert 0.1 <= hyperparams["peaked_policy_loss"] <= 20.0 and "clip_range_high" not in hyperparams
        if hyperparams["value_grad_rescaling"] == "smoothed":
            assert 0.9 <= hyperparams["pseudo_entropy_smoothing"] <= 0.999
        else:
            assert "pseudo_entropy_smoothing" not in hyperparams
        if hyperparams.get("peaked_policy_loss", False) is not False and "kl_trust_region" not in hyperparams:
            assert hyperparams["surrogate"] == "clipped"
            assert 0.01 <= hyperparams["peaked_policy_loss"] <= 1.0
        if hyperparams["surrogate"] == "unclipped":
            # without clipping the KL penalty is the only trust region
            assert hyperparams["kl_coef"] > 0
    assert seen == {
        "value_grad_rescaling": {None, "per_state", "per_batch", "smoothed"},
        "delta_target_policy": {"absolute", "logit"},
        "surrogate": {"clipped", "spo", "unclipped"},
        "peaked": {False, True},
        "kl_penalty": {False, True},
        "clip_range_high": {False, True},
        "dual_clip": {False, True},
        "kl_trust_region": {False, True},
        "ratio_change_limit": {False, True},
        "feature_drift_coef": {False, True},
    }


def test_variant_sampler_keeps_probability_options_away_from_box_actions():
    for params, hyperparams in _sampled("ppo_variant", "box"):
        assert "value_grad_rescaling" not in params and "delta_target_policy" not in params
        assert "value_grad_rescaling" not in hyperparams and "delta_target_policy" not in hyperparams


def test_own_options_of_the_presets():
    for _, hyperparams in _sampled("ppo_peaked", "discrete", n_trials=20):
        assert 0.01 <= hyperparams["peaked_policy_loss"] <= 1.0
    for _, hyperparams in _sampled("ppo_rescaled", "discrete", n_trials=20):
        assert 0.9 <= hyperparams["pseudo_entropy_smoothing"] <= 0.999
    spo_epsilons = {hyperparams["clip_range"] for _, hyperparams in _sampled("ppo_spo", "discrete", n_trials=20)}
    assert all(0.05 <= epsilon <= 0.6 for epsilon in spo_epsilons)
    assert len(spo_epsilons) == 20  # continuous, unlike PPO's four choices
    for params, hyperparams in _sampled("ppo_kl", "discrete", n_trials=20):
        assert "clip_range" not in params and "clip_range" not in hyperparams  # no clipping to tune
        assert 0.002 <= hyperparams["kl_penalty_target"] <= 0.05
        assert 0.1 <= hyperparams["kl_coef"] <= 10.0
    for params, hyperparams in _sampled("ppo_truly", "discrete", n_trials=20):
        assert "clip_range" not in params and "clip_range" not in hyperparams  # the KL bound replaces it
        assert 5e-4 <= hyperparams["kl_trust_region"] <= 0.1 and 0.1 <= hyperparams["peaked_policy_loss"] <= 20
    for _, hyperparams in _sampled("ppo_dual_clip", "discrete", n_trials=20):
        assert 1.5 <= hyperparams["dual_clip"] <= 10.0
    for params, hyperparams in _sampled("ppo_logit", "discrete", n_trials=20):
        assert set(params) == ZOO_PPO_PARAMS
        assert 0 < hyperparams["clip_range"] < 1


def test_convert_variant_options_by_hand():
    assert convert_variant_options({"one_minus_pseudo_entropy_smoothing": 0.01, "n_epochs": 4}) == {
        "pseudo_entropy_smoothing": 0.99,
        "n_epochs": 4,
    }
    assert convert_variant_options({"peaked_policy_loss": True, "restoring_slope": 0.3}) == {"peaked_policy_loss": 0.3}
    assert convert_variant_options({"peaked_policy_loss": False}) == {"peaked_policy_loss": False}
    assert convert_variant_options({"restoring_slope": 0.5}) == {"peaked_policy_loss": 0.5}
    assert convert_variant_options({"kl_penalty": False}) == {"kl_coef": 0.0}
    assert convert_variant_options({"kl_penalty": True, "kl_coef": 2.0}) == {"kl_coef": 2.0}
