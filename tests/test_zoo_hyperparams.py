"""The shipped ``hyperparams/<id>.yml`` files: format, provenance, keys and values accepted by the classes."""

import argparse
import inspect
import re

import pytest
import yaml
from gymnasium import spaces
from rl_zoo3.exp_manager import ExperimentManager

import sb3_ppo_variants
import sb3_ppo_variants.zoo.masked_envs  # registers sb3-contrib's masked tasks
from sb3_ppo_variants.zoo import ALGORITHM_CLASS_NAMES, hyperparams_file, register
from sb3_ppo_variants.zoo.validation import InvalidHyperparameters

IDS = sorted(ALGORITHM_CLASS_NAMES)
# rl-zoo3 consumes these itself (ExperimentManager._preprocess_hyperparams) instead of passing them on
ZOO_KEYS = {
    "n_timesteps",
    "n_envs",
    "normalize",
    "frame_stack",
    "env_wrapper",
    "vec_env_wrapper",
    "callback",
    "monitor_kwargs",
    "env_kwargs",
}
REQUIRED_SECTIONS = ["CartPole-v1", "Acrobot-v1", "LunarLander-v3", "MountainCar-v0", "atari", "default"]
# the sb3-contrib classes: the tasks of sb3-contrib's MaskablePPO tests and of rl-zoo3's ppo_lstm.yml
CONTRIB_SECTIONS = {
    "ppo_mask_variant": [
        "InvalidActionEnvDiscrete-v0",
        "InvalidActionEnvMultiDiscrete-v0",
        "InvalidActionEnvMultiBinary-v0",
        "default",
    ],
    "ppo_lstm_variant": ["CartPole-v1", "PendulumNoVel-v1", "Acrobot-v1", "atari", "default"],
}
# the environment each section is exercised on; "default" on ids absent from every file
SECTION_ENVS = {
    "CartPole-v1": ["CartPole-v1"],
    "Acrobot-v1": ["Acrobot-v1"],
    "LunarLander-v3": ["LunarLander-v3"],
    "MountainCar-v0": ["MountainCar-v0"],
    "Pendulum-v1": ["Pendulum-v1"],
    "PendulumNoVel-v1": ["PendulumNoVel-v1"],
    "InvalidActionEnvDiscrete-v0": ["InvalidActionEnvDiscrete-v0"],
    "InvalidActionEnvMultiDiscrete-v0": ["InvalidActionEnvMultiDiscrete-v0"],
    "InvalidActionEnvMultiBinary-v0": ["InvalidActionEnvMultiBinary-v0"],
    "atari": ["PongNoFrameskip-v4"],
    "default": ["CartPole-v0", "MountainCarContinuous-v0"],
}
# the options that need action probabilities, so a Box action space
NEEDS_DISCRETE_ACTIONS = {"ppo_logit", "ppo_rescaled"}
# the ids whose class itself supports no Box action space (MaskablePPO)
NO_BOX_ACTIONS = {"ppo_mask_variant"}
BOX_ENVS = ("Pendulum-v1", "MountainCarContinuous-v0", "PendulumNoVel-v1")
SOURCES = ("rl-zoo3's ppo.yml", "rl-zoo3's ppo_lstm.yml", "sb3-contrib's MaskablePPO")


def _load(algo_id):
    return yaml.safe_load(hyperparams_file(algo_id).read_text())


def constructor_arguments(cls) -> set[str]:
    """Every keyword the class accepts, following ``**kwargs`` up the MRO as the presets do."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" not in klass.__dict__:
            continue
        parameters = inspect.signature(klass.__dict__["__init__"]).parameters.values()
        names |= {p.name for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            break
    return names - {"self", "env", "_init_setup_model"}


def _cases():
    for algo_id in IDS:
        for section in _load(algo_id):
            for env_id in SECTION_ENVS[section]:
                yield pytest.param(algo_id, section, env_id, id=f"{algo_id}-{section}-{env_id}")


def test_each_file_has_the_required_sections_in_the_zoo_order():
    for algo_id in IDS:
        sections = list(_load(algo_id))
        if algo_id in CONTRIB_SECTIONS:
            assert sections == CONTRIB_SECTIONS[algo_id], algo_id
            continue
        expected = REQUIRED_SECTIONS[:-2]
        if algo_id not in NEEDS_DISCRETE_ACTIONS:
            expected = [*expected, "Pendulum-v1"]
        assert sorted(sections[:-2]) == sorted(expected), algo_id
        # exact env ids first, then atari, then default
        assert sections[-2:] == ["atari", "default"], algo_id


def test_every_key_is_a_constructor_argument_or_a_zoo_key():
    for algo_id in IDS:
        allowed = constructor_arguments(getattr(sb3_ppo_variants, ALGORITHM_CLASS_NAMES[algo_id])) | ZOO_KEYS
        for section, entry in _load(algo_id).items():
            unknown = set(entry) - allowed
            assert not unknown, f"{algo_id}.yml [{section}]: {sorted(unknown)}"


def test_every_entry_says_where_it_comes_from():
    """Derived entries name rl-zoo3's ppo.yml; an entry claimed as tuned names its study, trials and budget."""
    for algo_id in IDS:
        lines = hyperparams_file(algo_id).read_text().splitlines()
        for index, line in enumerate(lines):
            if not re.match(r"^[A-Za-z][\w\-]*:\s*$", line):
                continue
            comment_lines = []
            for previous in reversed(lines[:index]):
                if not previous.startswith("#"):
                    break
                comment_lines.insert(0, previous)
            comment = " ".join(comment_lines)
            assert comment, f"{algo_id}.yml: {line} has no comment saying where it comes from"
            if re.search(rf"tuned for {algo_id}", comment, re.IGNORECASE):
                for word in ("study", "trials", "timesteps"):
                    assert word in comment.lower(), f"{algo_id}.yml {line} claims tuning without its {word}"
            else:
                assert any(source in comment for source in SOURCES), f"{algo_id}.yml {line}: {comment}"


def _experiment(algo_id, env_id, tmp_path, **kwargs):
    args = argparse.Namespace(algo=algo_id, env=env_id)
    return ExperimentManager(args, algo_id, env_id, str(tmp_path / "logs"), eval_freq=-1, n_timesteps=64, **kwargs)


@pytest.mark.parametrize(("algo_id", "section", "env_id"), list(_cases()))
def test_each_entry_builds_its_model_through_the_zoo(algo_id, section, env_id, tmp_path):
    """The zoo's own pipeline (read, preprocess, validate, create envs and the full model) accepts the entry."""
    register()
    experiment = _experiment(algo_id, env_id, tmp_path)
    assert experiment.config == str(hyperparams_file(algo_id))
    is_box = env_id in BOX_ENVS
    if is_box and algo_id in NEEDS_DISCRETE_ACTIONS | NO_BOX_ACTIONS:
        refusal = "only supports" if algo_id in NO_BOX_ACTIONS else "needs action probabilities"
        with pytest.raises(InvalidHyperparameters, match=refusal):
            experiment.setup_experiment()
        assert not (tmp_path / "logs").exists()
        return
    model, _ = experiment.setup_experiment()
    try:
        assert type(model).__name__ == ALGORITHM_CLASS_NAMES[algo_id]
        assert isinstance(model.action_space, spaces.Box) == is_box
        for key, value in _load(algo_id)[section].items():
            if key in ZOO_KEYS or key in ("policy", "policy_kwargs", "learning_rate", "clip_range"):
                continue
            assert getattr(model, key) == value, (key, getattr(model, key), value)
    finally:
        model.env.close()


def test_a_user_conf_file_takes_precedence(tmp_path):
    register()
    conf = tmp_path / "mine.yml"
    conf.write_text("CartPole-v1:\n  n_timesteps: 64\n  policy: 'MlpPolicy'\n  peaked_policy_loss: 0.25\n")
    experiment = _experiment("ppo_peaked", "CartPole-v1", tmp_path, config=str(conf))
    assert experiment.config == str(conf)
    model, _ = experiment.setup_experiment()
    assert model.peaked_policy_loss == 0.25
    model.env.close()
