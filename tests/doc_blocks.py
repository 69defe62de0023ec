"""Fenced blocks of README.md and docs/*.md, and how to run them shrunk: the conventions are in test_docs.py."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = ["README.md", *sorted(path.relative_to(ROOT).as_posix() for path in (ROOT / "docs").glob("*.md"))]
SHELL = {"bash", "sh", "console"}
BUDGET = 512
BLOCK_TIMEOUT = 600


@dataclass(frozen=True)
class Block:
    document: str
    line: int  # of the opening fence
    language: str
    text: str

    @property
    def first_line(self) -> str:
        return self.text.splitlines()[0] if self.text else ""

    def __str__(self) -> str:
        return f"{self.document}:{self.line} ({self.language})"


FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")


def fenced_blocks(document: str) -> list[Block]:
    lines = (ROOT / document).read_text(encoding="utf-8").splitlines()
    blocks, index = [], 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        fence, start, body = opening["fence"], index, []
        index += 1
        while index < len(lines) and not lines[index].strip().startswith(fence):
            body.append(lines[index][len(opening["indent"]) :])
            index += 1
        info = opening["info"].strip().split()
        blocks.append(Block(document, start + 1, info[0].lower() if info else "", "\n".join(body) + "\n"))
        index += 1
    return blocks


ALL_BLOCKS = [block for document in DOCUMENTS for block in fenced_blocks(document)]


def needs_postgres(block: Block) -> bool:
    return "postgresql://" in block.text


# --- shrinking a command ------------------------------------------------------------------------------------------


def _is_option(token: str) -> bool:
    return token.startswith("-") and not re.fullmatch(r"-\d+(\.\d*)?([eE][-+]?\d+)?", token)


def _find(args: list[str], names: tuple[str, ...]) -> tuple[int, int] | None:
    """Where option ``names`` and its values are in ``args``: (start, end), or None."""
    for start, token in enumerate(args):
        if token in names:
            end = start + 1
            while end < len(args) and not _is_option(args[end]):
                end += 1
            return start, end
    return None


def _set(args: list[str], names: tuple[str, ...], *values: str) -> list[str]:
    span = _find(args, names)
    if span is None:
        return [*args, names[0], *values]
    return [*args[: span[0]], args[span[0]], *values, *args[span[1] :]]


def _first(args: list[str], names: tuple[str, ...], default: str | None = None) -> list[str]:
    span = _find(args, names)
    if span is None:
        return args if default is None else [*args, names[0], default]
    first = args[span[0] + 1 : span[0] + 2]
    if first == ["$(seq"] and span[0] + 2 < len(args):  # ``$(seq 0 29)``: its first number
        first = [args[span[0] + 2].rstrip(")")]
    return _set(args, names, *first)


def _add_flag(args: list[str], flag: str) -> list[str]:
    return args if flag in args else [*args, flag]


def _shrink_zoo(script: str, args: list[str]) -> list[str]:
    if script == "train":
        args = _set(args, ("-n", "--n-timesteps"), str(BUDGET))
        if "-optimize" in args or "--optimize-hyperparameters" in args:
            args = _set(args, ("--n-trials",), "2")
            args = _set(args, ("--n-jobs",), "1")
            if _find(args, ("--max-total-trials",)):
                args = _set(args, ("--max-total-trials",), "2")
            args = _add_flag(args, "--no-optim-plots")
            # a seed whose first sampled trials are cheap (as in test_zoo_tuning): a random draw can run for minutes
            if not _find(args, ("--seed",)):
                args = _set(args, ("--seed",), "10")
            if not _find(args, ("--eval-episodes",)):
                args = _set(args, ("--eval-episodes",), "2")
    elif script in ("enjoy", "record_video"):
        args = _set(args, ("-n", "--n-timesteps"), "64")
        if script == "enjoy":
            args = _add_flag(args, "--no-render")
    return args


def _shrink_benchmark(args: list[str]) -> list[str]:
    command, options = args[0], args[1:]
    if command in ("learn", "collapse"):
        options = _set(options, ("--timesteps",), str(BUDGET))
        for name in ("--tasks", "--seeds", "--lr-scales"):
            options = _first(options, (name,))
        options = _first(options, ("--algorithms",), "ppo")
        if not _find(options, ("--workers",)) and not _find(options, ("--ray-address",)):
            options = _set(options, ("--workers",), "1")
    elif command == "cost":
        for name in ("--setting", "--threads"):
            options = _first(options, (name,))
        setting = _find(options, ("--setting",))
        first_setting = options[setting[0] + 1] if setting is not None else "mlp"
        # each setting's variant with every option off: the contrib settings measure their own classes
        variant = {"masked": "maskable_variant", "recurrent": "recurrent_variant"}.get(first_setting, "variant")
        options = _first(options, ("--algorithms",), variant)
        options = _set(options, ("--repeats",), "1")
        options = _set(options, ("--fps-repeats",), "0")  # the learn() timing: tests/test_benchmark.py
    elif command == "throughput":
        options = _set(options, ("--timesteps",), "256")
        options = _first(options, ("--algorithms",), "ppo")
        options = _set(options, ("--seeds",), "0")
        for name in ("--sb3-seeds", "--workers", "--group-size", "--scaling-sizes"):
            options = _set(options, (name,), "1")
    elif command in ("report", "study", "agreement"):
        options = _set(options, ("--bootstrap-reps",), "50")
    return [command, *options]


def shrink(line: str) -> str:
    """The command of one logical shell line with the budget of the module docstring; other lines unchanged."""
    tokens = shlex.split(line, comments=True)
    if not tokens:
        return line
    assignments = []
    while tokens and re.fullmatch(r"[A-Za-z_]\w*=.*", tokens[0]):
        assignments.append(tokens.pop(0))
    if tokens[:2] == ["python", "-m"] and len(tokens) > 2:
        head, module, args = tokens[:3], tokens[2], tokens[3:]
    elif tokens and tokens[0] == "rl_zoo3" and len(tokens) > 1:
        head, module, args = tokens[:2], f"rl_zoo3.{tokens[1]}", tokens[2:]
    else:
        return line
    if module.startswith("rl_zoo3."):
        args = _shrink_zoo(module.removeprefix("rl_zoo3."), args)
    elif module == "sb3_ppo_variants.benchmark" and args:
        args = _shrink_benchmark(args)
    elif module == "sb3_ppo_variants.zoo.evaluate":
        args = _set(_first(args, ("--seeds",)), ("-n", "--n-timesteps"), str(BUDGET))
        args = _set(args, ("--episodes",), "2")
    elif module == "sb3_ppo_variants.collapse" and args[:1] == ["collect-probe"]:
        args = _set(args, ("-n",), "64")
    else:
        return line
    return shlex.join([*assignments, *head, *args])


def shell_script(block: Block) -> str:
    text = block.text
    if block.language == "console":
        commands, continuing = [], False
        for line in text.splitlines():
            if line.startswith("$ ") or continuing:
                commands.append(line.removeprefix("$ "))
                continuing = line.endswith("\\")
        text = "\n".join(commands) + "\n"
    logical = re.sub(r"\\\n[ \t]*", " ", text)
    return "".join(shrink(line) + "\n" for line in logical.splitlines())


PYTHON_RUNNER = f"""
import runpy, sys
from stable_baselines3.common.base_class import BaseAlgorithm

_setup_learn = BaseAlgorithm._setup_learn


def _capped(self, total_timesteps, *args, **kwargs):
    return _setup_learn(self, min(int(total_timesteps), {BUDGET}), *args, **kwargs)


BaseAlgorithm._setup_learn = _capped
runpy.run_path(sys.argv[1], run_name="__main__")
"""


# --- running a document -------------------------------------------------------------------------------------------


def _placeholders(folder: Path, text: str) -> None:
    """``GOOD.zip``, ``BAD.zip`` and ``RUN_DIR`` where the block names them and they do not exist yet."""
    wanted = [name for name in ("GOOD.zip", "BAD.zip", "RUN_DIR") if name in text and not (folder / name).exists()]
    if not wanted:
        return
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.logger import configure

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for seed, name in enumerate(("GOOD.zip", "BAD.zip")):
            if name in wanted:
                PPO("MlpPolicy", "CartPole-v1", policy_kwargs=dict(net_arch=[16]), seed=seed).save(folder / name)
        if "RUN_DIR" in wanted:
            model = PPO("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=64, n_epochs=1, seed=0)
            model.set_logger(configure(str(folder / "RUN_DIR"), ["csv"]))
            model.learn(256)
    finally:
        torch.set_num_threads(threads)


def new_folder(tmp_path: Path) -> Path:
    """An empty folder in which the clone's ``requirements/`` and ``docs/scripts/`` are reachable."""
    folder = tmp_path / "reader"
    (folder / "docs").mkdir(parents=True)
    (folder / "requirements").symlink_to(ROOT / "requirements")
    (folder / "docs" / "scripts").symlink_to(ROOT / "docs" / "scripts")
    return folder


def yaml_file(block: Block) -> str | None:
    """The file a ``yaml`` block is saved as, from its first line (``# collapse.yml``), or None."""
    named = re.fullmatch(r"#\s*(\S+\.ya?ml)\s*", block.first_line)
    return named[1] if block.language == "yaml" and named else None


def find_block(document: str, begins: str) -> Block:
    """The one block of ``document`` whose first line begins with ``begins``."""
    (block,) = [b for b in ALL_BLOCKS if b.document == document and b.first_line.startswith(begins)]
    return block


@dataclass
class DocumentRun:
    """Runs blocks one after the other in ``folder``, with ``python`` (whose folder also comes first on PATH,
    for the console scripts) and the environment ``env``."""

    folder: Path
    env: dict[str, str]
    python: Path = field(default_factory=lambda: Path(sys.executable))

    def run(self, block: Block, storage: str | None = None) -> float:
        """Run one block; assert it exits 0 and return its wall-clock seconds."""
        started = time.monotonic()
        _placeholders(self.folder, block.text)
        if block.language == "python":
            script = self.folder / f"block_{block.line}.py"
            script.write_text(block.text)
            command = [str(self.python), "-c", PYTHON_RUNNER, script.name]
            shown = block.text
        else:
            text = shell_script(block)
            if storage is not None:
                text = re.sub(r"postgresql://[^\s/]+/[\w-]+", storage, text)
            script = self.folder / f"block_{block.line}.sh"
            script.write_text(text)
            command = ["bash", "-e", "-o", "pipefail", script.name]
            shown = text
        env = {**self.env, "PATH": f"{self.python.parent}:{self.env.get('PATH', '')}", "MPLBACKEND": "Agg"}
        result = subprocess.run(
            command, cwd=self.folder, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT, check=False
        )
        assert result.returncode == 0, (
            f"{block} exited {result.returncode}; as run:\n{shown}\n--- stdout (tail) ---\n{result.stdout[-3000:]}\n"
            f"--- stderr (tail) ---\n{result.stderr[-5000:]}"
        )
        return time.monotonic() - started
