"""Every module that the package's user-facing commands import at run time is declared and imports.

The first test reads the installed distribution's metadata, so it fails when a requirement is dropped from
``pyproject.toml`` even on a machine where the module happens to be installed by hand; the second fails
when the environment lacks the module, and its message names the extra to install.
"""

from importlib import import_module, metadata

import pytest
from packaging.requirements import Requirement

DISTRIBUTION = "sb3-ppo-variants"

# module, the distribution that provides it (with the gymnasium extra that pulls it in), this package's
# extra that declares it (None: a plain install), and the command that needs it
RUNTIME_MODULES = [
    ("pygame", "gymnasium[classic-control]", None, "rendering: rl_zoo3.enjoy, rl_zoo3.record_video"),
    ("Box2D", "gymnasium[box2d]", None, "the shipped LunarLander-v3 entries"),
    ("ale_py", "gymnasium[atari]", None, "Atari ids such as PongNoFrameskip-v4"),
    ("cv2", "opencv-python-headless", None, "SB3's AtariWrapper"),
    ("moviepy", "moviepy", None, "rl_zoo3.record_video"),
    ("requests", "requests", None, "rl_zoo3.enjoy and record_video (the zoo's hub loader)"),
    ("pandas", "pandas", None, "rl_zoo3 -optimize (optuna's trials table), the collapse report"),
    ("tensorboard", "tensorboard", None, "rl_zoo3 -tb, SB3's tensorboard_log"),
    ("tqdm", "tqdm", None, "rl_zoo3 --progress"),
    ("rich", "rich", None, "rl_zoo3 --progress"),
    ("matplotlib", "matplotlib", None, "the collapse report's figures"),
    ("seaborn", "seaborn", None, "the rl_zoo3 console script (it imports the zoo's plots)"),
    ("scipy", "scipy", None, "the rl_zoo3 console script (it imports the zoo's plots)"),
    ("pytablewriter", "pytablewriter", None, "the rl_zoo3 console script (it imports the zoo's plots)"),
    ("psycopg", "psycopg[binary]", "postgres", "rl_zoo3 -optimize --storage postgresql://..."),
    ("sqlalchemy", "SQLAlchemy", "postgres", "postgresql:// meaning psycopg 3 (SQLAlchemy 2.1 and later)"),
    ("rliable", "rliable", "bench", "python -m sb3_ppo_variants.benchmark report"),
    ("minatar", "minatar", "bench", "the benchmark's MinAtar tasks"),
    ("ray", "ray", "ray", "python -m sb3_ppo_variants.benchmark ... --ray-address"),
]


def _install_hint(extra: str | None) -> str:
    return f"pip install 'sb3-ppo-variants[{extra}]'" if extra else "pip install sb3-ppo-variants"


def _declared(extra: str | None) -> list[Requirement]:
    """The requirements that ``pip install sb3-ppo-variants[extra]`` adds to a plain install (the plain ones for
    ``None``)."""

    def applies(requirement: Requirement, chosen: str) -> bool:
        return requirement.marker is None or requirement.marker.evaluate({"extra": chosen})

    requirements = [Requirement(text) for text in metadata.requires(DISTRIBUTION) or []]
    return [r for r in requirements if applies(r, extra or "") and not (extra and applies(r, ""))]


@pytest.mark.parametrize(
    ("module", "provider", "extra", "needed_by"), RUNTIME_MODULES, ids=[m[0] for m in RUNTIME_MODULES]
)
def test_the_module_is_declared(module: str, provider: str, extra: str | None, needed_by: str) -> None:
    wanted = Requirement(provider)
    declared = {requirement.name.lower(): requirement for requirement in _declared(extra)}
    where = f"sb3-ppo-variants[{extra}]" if extra else "sb3-ppo-variants' plain dependencies"
    assert wanted.name.lower() in declared, f"{provider} ({module}, for {needed_by}) is not declared in {where}"
    missing_extras = wanted.extras - declared[wanted.name.lower()].extras
    assert not missing_extras, f"{where} asks for {declared[wanted.name.lower()]}, without {sorted(missing_extras)}"


@pytest.mark.parametrize(
    ("module", "provider", "extra", "needed_by"), RUNTIME_MODULES, ids=[m[0] for m in RUNTIME_MODULES]
)
def test_the_module_imports(module: str, provider: str, extra: str | None, needed_by: str) -> None:
    try:
        import_module(module)
    except ImportError as error:
        pytest.fail(f"{module} ({needed_by}) does not import: {error}. Install it with {_install_hint(extra)}")


def test_the_atari_roms_are_installed() -> None:
    import ale_py
    import gymnasium as gym

    gym.register_envs(ale_py)
    env = gym.make("PongNoFrameskip-v4")
    observation, _ = env.reset(seed=0)
    env.close()
    assert observation.shape == (210, 160, 3), f"Pong's ROM gave a {observation.shape} frame; {_install_hint(None)}"


def test_the_wheel_marks_the_package_typed() -> None:
    files = {str(path) for path in metadata.files(DISTRIBUTION) or []}
    assert "sb3_ppo_variants/py.typed" in files, "py.typed is missing from the installed package"
