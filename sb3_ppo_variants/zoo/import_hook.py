"""Register sb3-ppo-variants with rl-zoo3 as soon as rl-zoo3 loads its tables.

The wheel installs this file at the top level of site-packages as ``_sb3_ppo_variants_zoo_hook`` and a
``sb3_ppo_variants_zoo.pth`` next to it, whose single line calls :func:`install` at interpreter start.
At that moment the hook imports nothing beyond ``os`` and ``sys`` (both already loaded): it only puts a
:class:`ZooRegistrationFinder` on ``sys.meta_path``. The finder ignores every import except
``rl_zoo3.utils``, ``rl_zoo3.hyperparams_opt`` and ``rl_zoo3.exp_manager``; once one of those has finished
executing, it imports :mod:`sb3_ppo_variants.zoo.registration` and lets it add the variants to that module's
tables. After the three modules are done, the finder removes itself.

Setting ``SB3_PPO_VARIANTS_NO_ZOO_HOOK=1`` keeps the finder off (``sb3_ppo_variants.zoo.register()``
still works). A failure never propagates: it becomes a ``RuntimeWarning`` and rl-zoo3 keeps working
without the variants.
"""

import os
import sys

DISABLE_VARIABLE = "SB3_PPO_VARIANTS_NO_ZOO_HOOK"
WATCHED_MODULES = ("rl_zoo3.utils", "rl_zoo3.hyperparams_opt", "rl_zoo3.exp_manager")


def hook_disabled() -> bool:
    """Whether the environment asks for the automatic registration to stay off."""
    return os.environ.get(DISABLE_VARIABLE, "").strip().lower() not in ("", "0", "false", "no", "off")


def _warn(message: str) -> None:
    import warnings

    # attributed to this module, so ``-W ignore::RuntimeWarning:_sb3_ppo_variants_zoo_hook`` can silence it
    warnings.warn_explicit(message, RuntimeWarning, "sb3_ppo_variants_zoo.pth", 1, module="_sb3_ppo_variants_zoo_hook")


def _register_loaded_module(name: str) -> None:
    try:
        from sb3_ppo_variants.zoo.registration import register_module

        register_module(sys.modules[name])
    except Exception as exc:
        _warn(
            f"sb3-ppo-variants could not register its algorithms with {name}: {exc}. "
            "rl_zoo3 works as usual, without the PPO variants; call sb3_ppo_variants.zoo.register() to see the "
            f"full error, or set {DISABLE_VARIABLE}=1 to turn this hook off."
        )


class _RegisteringLoader:
    """The module's own loader, followed by the registration once the module body has run."""

    def __init__(self, loader, finder: "ZooRegistrationFinder") -> None:
        self._loader = loader
        self._finder = finder

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        self._finder.module_executed(module.__name__)

    def __getattr__(self, name: str):
        # get_source, get_resource_reader, is_package, ... behave as the wrapped loader's
        return getattr(self._loader, name)


class ZooRegistrationFinder:
    """A ``sys.meta_path`` finder that only watches rl-zoo3's algorithm, sampler and experiment modules."""

    def __init__(self, watched: tuple[str, ...] = WATCHED_MODULES) -> None:
        self.pending = set(watched)

    def find_spec(self, fullname: str, path=None, target=None):
        if fullname not in self.pending:
            return None
        try:
            for finder in list(sys.meta_path):
                if finder is self or isinstance(finder, ZooRegistrationFinder):
                    continue
                find_spec = getattr(finder, "find_spec", None)
                if find_spec is None:
                    continue
                spec = find_spec(fullname, path, target)
                if spec is None:
                    continue
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _RegisteringLoader(spec.loader, self)
                return spec
        except Exception as exc:
            _warn(f"sb3-ppo-variants' rl_zoo3 import hook failed while locating {fullname}: {exc}")
        return None

    def module_executed(self, name: str) -> None:
        self.pending.discard(name)
        if not self.pending:
            self.uninstall()
        _register_loaded_module(name)

    def uninstall(self) -> None:
        try:
            sys.meta_path.remove(self)
        except ValueError:
            pass


def install() -> "ZooRegistrationFinder | None":
    """Arm the hook (called by the ``.pth`` file); a no-op when disabled or already armed."""
    try:
        if hook_disabled():
            return None
        for finder in sys.meta_path:
            if isinstance(finder, ZooRegistrationFinder) or type(finder).__name__ == "ZooRegistrationFinder":
                return None
        finder = ZooRegistrationFinder(tuple(name for name in WATCHED_MODULES if name not in sys.modules))
        already_loaded = [name for name in WATCHED_MODULES if name in sys.modules]
        if finder.pending:
            sys.meta_path.insert(0, finder)
        for name in already_loaded:
            _register_loaded_module(name)
        return finder
    except Exception as exc:
        _warn(f"sb3-ppo-variants could not arm its rl_zoo3 import hook: {exc}")
        return None
