"""What registering with rl-zoo3 changes, one zoo module at a time.

rl-zoo3 keeps its algorithms in module-level tables and looks everything up there at call time
(``--algo`` choices are built from ``ALGOS`` inside ``train()``/``enjoy()``), so adding entries after the
zoo's modules have executed is enough:

``rl_zoo3.utils``
    ``ALGOS[<id>] = <class>`` for every id (train, enjoy, record_video and ``--algo`` choices).
``rl_zoo3.hyperparams_opt``
    ``HYPERPARAMS_SAMPLER[<id>]`` and ``HYPERPARAMS_CONVERTER[<id>]`` (``-optimize`` and ``--trial-id``).
``rl_zoo3.exp_manager``
    ``ExperimentManager.__init__``: without ``--conf-file``, and when the zoo ships no
    ``hyperparams/<id>.yml`` of its own, read the one shipped in this package.
    ``ExperimentManager._preprocess_hyperparams``: check the merged hyperparameters against the class
    before the run folder exists (:mod:`.validation`).
    The module's ``optuna``: ``create_study`` gives database storages a heartbeat (:mod:`.heartbeat`).

Each step is idempotent and only touches our ids. A zoo whose internals moved raises
:class:`ZooRegistrationError` naming what is missing.
"""

import functools
import inspect
import os
import types
from collections.abc import Callable, MutableMapping
from typing import Any

from sb3_ppo_variants.zoo.ids import ALGORITHM_CLASS_NAMES, algorithm_class, hyperparams_file

_WRAPPED_MARK = "__sb3_ppo_variants_wrapped__"


class ZooRegistrationError(RuntimeError):
    """rl-zoo3 does not have the tables or methods the registration extends."""


def _zoo_version() -> str:
    try:
        from importlib.metadata import version

        return version("rl_zoo3")
    except Exception:
        return "unknown"


def _table(module: types.ModuleType, name: str) -> MutableMapping:
    table = getattr(module, name, None)
    if not isinstance(table, MutableMapping):
        raise ZooRegistrationError(
            f"{module.__name__}.{name} is missing or not a dict in rl_zoo3 {_zoo_version()}; "
            "this version of rl_zoo3 is not supported by sb3-ppo-variants"
        )
    return table


def _qualified_name(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def _add_entries(table: MutableMapping, entries: dict[str, Any], where: str) -> None:
    taken = []
    for algo_id, value in entries.items():
        current = table.get(algo_id)
        if current is not None and _qualified_name(current) != _qualified_name(value):
            taken.append(f"{algo_id!r} ({_qualified_name(current)})")
            continue
        table[algo_id] = value
    if taken:
        raise ZooRegistrationError(f"{where} already has entries {', '.join(taken)}; those ids were left as they are")


def register_algorithms(utils: types.ModuleType) -> None:
    algorithms = {algo_id: algorithm_class(algo_id) for algo_id in ALGORITHM_CLASS_NAMES}
    _add_entries(_table(utils, "ALGOS"), algorithms, f"{utils.__name__}.ALGOS")


def register_samplers(hyperparams_opt: types.ModuleType) -> None:
    samplers = _table(hyperparams_opt, "HYPERPARAMS_SAMPLER")
    converters = _table(hyperparams_opt, "HYPERPARAMS_CONVERTER")
    for shared in ("sample_ppo_params", "convert_onpolicy_params"):
        if not callable(getattr(hyperparams_opt, shared, None)):
            raise ZooRegistrationError(
                f"{hyperparams_opt.__name__}.{shared} not found in rl_zoo3 {_zoo_version()}; the samplers reuse it"
            )
    from sb3_ppo_variants.zoo.samplers import CONVERTERS, SAMPLERS

    _add_entries(samplers, SAMPLERS, f"{hyperparams_opt.__name__}.HYPERPARAMS_SAMPLER")
    _add_entries(converters, CONVERTERS, f"{hyperparams_opt.__name__}.HYPERPARAMS_CONVERTER")


def _method(cls: type, name: str) -> Callable:
    method = cls.__dict__.get(name)
    if not callable(method):
        raise ZooRegistrationError(
            f"rl_zoo3 {_zoo_version()}: ExperimentManager.{name} not found; this version of rl_zoo3 is not supported "
            "by sb3-ppo-variants"
        )
    return method


def _wrap(cls: type, name: str, make_wrapper: Callable[[Callable], Callable]) -> None:
    original = _method(cls, name)
    if getattr(original, _WRAPPED_MARK, False):
        return
    wrapper = functools.wraps(original)(make_wrapper(original))
    setattr(wrapper, _WRAPPED_MARK, True)
    setattr(cls, name, wrapper)


def _with_shipped_hyperparams(original_init: Callable) -> Callable:
    signature = inspect.signature(original_init)
    if "config" not in signature.parameters:
        raise ZooRegistrationError(
            f"rl_zoo3 {_zoo_version()}: ExperimentManager.__init__ has no 'config' argument; this version of rl_zoo3 "
            "is not supported by sb3-ppo-variants"
        )

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        if getattr(self, "algo", None) not in ALGORITHM_CLASS_NAMES:
            return
        config = signature.bind(self, *args, **kwargs).arguments.get("config")
        if config is None and not os.path.isfile(self.config):
            self.config = str(hyperparams_file(self.algo))

    return __init__


def _with_validation(original_preprocess: Callable) -> Callable:
    def _preprocess_hyperparams(self: Any, hyperparams: dict[str, Any]) -> Any:
        result = original_preprocess(self, hyperparams)
        if getattr(self, "algo", None) in ALGORITHM_CLASS_NAMES:
            from sb3_ppo_variants.zoo.validation import validate_or_exit

            constructor_kwargs, env_wrapper = result[0], result[1]
            source = str(self.config)
            if getattr(self, "custom_hyperparams", None):
                source += " and --hyperparams " + " ".join(
                    f"{key}:{value!r}" for key, value in self.custom_hyperparams.items()
                )
            validate_or_exit(
                algorithm_class(self.algo),
                constructor_kwargs,
                algo_id=self.algo,
                env_id=self.env_name.gym_id,
                source=source,
                env_kwargs=self.env_kwargs,
                env_wrapper=env_wrapper,
                n_envs=self.n_envs,
            )
        return result

    return _preprocess_hyperparams


def patch_experiment_manager(exp_manager: types.ModuleType) -> None:
    from sb3_ppo_variants.zoo.heartbeat import OptunaWithHeartbeat

    cls = getattr(exp_manager, "ExperimentManager", None)
    if not isinstance(cls, type):
        raise ZooRegistrationError(f"rl_zoo3 {_zoo_version()}: rl_zoo3.exp_manager.ExperimentManager not found")
    for name in ("__init__", "_preprocess_hyperparams", "hyperparameters_optimization"):
        _method(cls, name)  # all present before anything is wrapped
    zoo_optuna = getattr(exp_manager, "optuna", None)
    if not isinstance(zoo_optuna, types.ModuleType) or not hasattr(zoo_optuna, "create_study"):
        raise ZooRegistrationError(
            f"rl_zoo3 {_zoo_version()}: rl_zoo3.exp_manager no longer imports optuna as a module"
        )
    _wrap(cls, "__init__", _with_shipped_hyperparams)
    _wrap(cls, "_preprocess_hyperparams", _with_validation)
    if not isinstance(zoo_optuna, OptunaWithHeartbeat):
        exp_manager.optuna = OptunaWithHeartbeat(zoo_optuna)  # type: ignore[attr-defined]


REGISTRARS: dict[str, Callable[[types.ModuleType], None]] = {
    "rl_zoo3.utils": register_algorithms,
    "rl_zoo3.hyperparams_opt": register_samplers,
    "rl_zoo3.exp_manager": patch_experiment_manager,
}


def register_module(module: types.ModuleType) -> None:
    """Apply the registration step for one of rl-zoo3's modules (no-op for any other module)."""
    registrar = REGISTRARS.get(module.__name__)
    if registrar is not None:
        registrar(module)
