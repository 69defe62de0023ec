"""Registration with rl-zoo3: the import hook armed by the installed .pth, ``register()``, and failures."""

import json
import textwrap
import types

import pytest
import rl_zoo3.exp_manager
import rl_zoo3.hyperparams_opt
import rl_zoo3.utils

import sb3_ppo_variants
from sb3_ppo_variants.zoo import ALGORITHM_CLASS_NAMES, ZooRegistrationError, register
from sb3_ppo_variants.zoo.heartbeat import OptunaWithHeartbeat
from sb3_ppo_variants.zoo.registration import register_module

IDS = sorted(ALGORITHM_CLASS_NAMES)

REPORT_TABLES = """
import json, sys
import rl_zoo3.train  # imports rl_zoo3.utils, rl_zoo3.hyperparams_opt and rl_zoo3.exp_manager
from rl_zoo3 import ALGOS
from rl_zoo3.hyperparams_opt import HYPERPARAMS_CONVERTER, HYPERPARAMS_SAMPLER
import rl_zoo3.exp_manager as exp_manager
print(json.dumps({
    "algos": {key: value.__module__ + "." + value.__name__ for key, value in ALGOS.items()},
    "samplers": sorted(HYPERPARAMS_SAMPLER),
    "converters": sorted(HYPERPARAMS_CONVERTER),
    "zoo_optuna": type(exp_manager.optuna).__name__,
    "finders": [type(finder).__name__ for finder in sys.meta_path],
}))
"""


def _tables(zoo, tmp_path, **env):
    result = zoo.run([zoo.python, "-c", REPORT_TABLES], cwd=tmp_path, env=zoo.environment(**env), timeout=120)
    assert result.returncode == 0, zoo.describe(result)
    return json.loads(result.stdout.strip().splitlines()[-1]), result


def test_interpreter_start_arms_the_hook_without_heavy_imports(zoo, tmp_path):
    code = "import json, sys; print(json.dumps([sorted(sys.modules), [type(f).__name__ for f in sys.meta_path]]))"
    result = zoo.run([zoo.python, "-c", code], cwd=tmp_path, timeout=60)
    assert result.returncode == 0, zoo.describe(result)
    modules, finders = json.loads(result.stdout)
    assert "_sb3_ppo_variants_zoo_hook" in modules
    assert finders[0] == "ZooRegistrationFinder"
    heavy = {"torch", "numpy", "gymnasium", "optuna", "stable_baselines3", "rl_zoo3", "sb3_ppo_variants"}
    assert heavy.isdisjoint(name.split(".")[0] for name in modules)


def test_importing_rl_zoo3_registers_every_id(zoo, tmp_path):
    tables, result = _tables(zoo, tmp_path)
    for algo_id, class_name in ALGORITHM_CLASS_NAMES.items():
        module = "contrib" if algo_id in ("ppo_mask_variant", "ppo_lstm_variant") else "variant_ppo"
        assert tables["algos"][algo_id] == f"sb3_ppo_variants.{module}.{class_name}"
        assert algo_id in tables["samplers"]
        assert algo_id in tables["converters"]
    assert tables["algos"]["ppo"] == "stable_baselines3.ppo.ppo.PPO"
    assert tables["zoo_optuna"] == "OptunaWithHeartbeat"
    # all three modules seen: the finder has removed itself
    assert "ZooRegistrationFinder" not in tables["finders"]
    assert "Warning" not in result.stderr


def test_importing_the_samplers_before_rl_zoo3_registers_them(zoo, tmp_path):
    """The registration imports the samplers from inside rl_zoo3.hyperparams_opt's import: no cycle."""
    code = "import sb3_ppo_variants.zoo.samplers\n" + REPORT_TABLES
    result = zoo.run([zoo.python, "-c", code], cwd=tmp_path, timeout=120)
    assert result.returncode == 0, zoo.describe(result)
    assert "Warning" not in result.stderr, result.stderr
    tables = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(IDS) <= set(tables["samplers"]) and set(IDS) <= set(tables["converters"])


def test_environment_variable_turns_the_hook_off(zoo, tmp_path):
    tables, _ = _tables(zoo, tmp_path, SB3_PPO_VARIANTS_NO_ZOO_HOOK="1")
    assert not set(IDS) & set(tables["algos"])
    assert tables["zoo_optuna"] == "module"

    result = zoo.run(
        zoo.command("train", "--algo", "ppo_logit", "--env", "CartPole-v1", "-n", "64"),
        cwd=tmp_path,
        env=zoo.environment(SB3_PPO_VARIANTS_NO_ZOO_HOOK="1"),
        timeout=120,
    )
    assert result.returncode == 2, zoo.describe(result)
    assert "invalid choice: 'ppo_logit'" in result.stderr
    assert not (tmp_path / "logs").exists()


def test_explicit_register_works_with_the_hook_off(zoo, tmp_path):
    code = (
        "import sb3_ppo_variants.zoo as zoo_integration; zoo_integration.register(); zoo_integration.register()\n"
        + REPORT_TABLES
    )
    result = zoo.run(
        [zoo.python, "-c", code], cwd=tmp_path, env=zoo.environment(SB3_PPO_VARIANTS_NO_ZOO_HOOK="1"), timeout=120
    )
    assert result.returncode == 0, zoo.describe(result)
    tables = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(IDS) <= set(tables["algos"]) and set(IDS) <= set(tables["samplers"])
    assert tables["zoo_optuna"] == "OptunaWithHeartbeat"


def _fake_zoo(root, utils_body, exp_manager_body="class ExperimentManager:\n    pass\n"):
    """An rl_zoo3 whose internals moved: the hook must warn and leave the program alone."""
    package = root / "rl_zoo3"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "utils.py").write_text(utils_body)
    (package / "hyperparams_opt.py").write_text("SAMPLERS = {}\n")
    (package / "exp_manager.py").write_text(exp_manager_body)


def test_a_zoo_with_other_internals_gives_a_warning_and_keeps_working(zoo, tmp_path):
    _fake_zoo(tmp_path, utils_body="REGISTRY = {}\n")
    code = textwrap.dedent(
        """
        import warnings
        warnings.simplefilter("always")
        import rl_zoo3.utils, rl_zoo3.hyperparams_opt, rl_zoo3.exp_manager
        print("program still running", rl_zoo3.utils.REGISTRY)
        """
    )
    result = zoo.run([zoo.python, "-c", code], cwd=tmp_path, timeout=120)
    assert result.returncode == 0, zoo.describe(result)
    assert "program still running {}" in result.stdout
    for missing in ("rl_zoo3.utils.ALGOS", "HYPERPARAMS_SAMPLER", "ExperimentManager.__init__ not found"):
        assert missing in result.stderr, result.stderr
    assert result.stderr.count("RuntimeWarning: sb3-ppo-variants could not register") == 3
    assert "SB3_PPO_VARIANTS_NO_ZOO_HOOK=1" in result.stderr


def test_a_failing_zoo_module_fails_as_without_the_hook(zoo, tmp_path):
    _fake_zoo(tmp_path, utils_body="raise ImportError('broken zoo')\n")
    result = zoo.run([zoo.python, "-c", "import rl_zoo3.utils"], cwd=tmp_path, timeout=60)
    assert result.returncode == 1
    assert "ImportError: broken zoo" in result.stderr
    assert "sb3-ppo-variants" not in result.stderr


def test_register_adds_the_classes_and_is_idempotent():
    register()
    init = rl_zoo3.exp_manager.ExperimentManager.__init__
    register()
    assert rl_zoo3.exp_manager.ExperimentManager.__init__ is init
    for algo_id, class_name in ALGORITHM_CLASS_NAMES.items():
        assert rl_zoo3.utils.ALGOS[algo_id] is getattr(sb3_ppo_variants, class_name)
        assert callable(rl_zoo3.hyperparams_opt.HYPERPARAMS_SAMPLER[algo_id])
        assert callable(rl_zoo3.hyperparams_opt.HYPERPARAMS_CONVERTER[algo_id])
    assert isinstance(rl_zoo3.exp_manager.optuna, OptunaWithHeartbeat)
    assert not isinstance(rl_zoo3.exp_manager.optuna.wrapped, OptunaWithHeartbeat)
    assert rl_zoo3.exp_manager.optuna.TrialPruned is rl_zoo3.exp_manager.optuna.wrapped.TrialPruned


@pytest.mark.parametrize(
    ("module_name", "missing"),
    [
        ("rl_zoo3.utils", "rl_zoo3.utils.ALGOS"),
        ("rl_zoo3.hyperparams_opt", "rl_zoo3.hyperparams_opt.HYPERPARAMS_SAMPLER"),
        ("rl_zoo3.exp_manager", "ExperimentManager"),
    ],
)
def test_register_names_what_a_changed_zoo_lacks(module_name, missing):
    with pytest.raises(ZooRegistrationError, match=missing.replace(".", r"\.")):
        register_module(types.ModuleType(module_name))


def test_register_leaves_ids_the_zoo_already_has():
    utils = types.ModuleType("rl_zoo3.utils")
    utils.ALGOS = {"ppo_kl": dict}
    with pytest.raises(ZooRegistrationError, match="'ppo_kl'"):
        register_module(utils)
    assert utils.ALGOS["ppo_kl"] is dict
    assert utils.ALGOS["ppo_logit"] is sb3_ppo_variants.LogitPPO
