"""Every fenced ``bash``, ``sh``, ``console`` and ``python`` block of README.md and docs/*.md runs, shrunk.

How the blocks run; a new block in the docs follows these conventions or is listed in ``NOT_RUN_HERE``:

* Each document runs in a new, empty folder, its blocks in the order they appear, as a reader of a clone of
  this repository runs them (the clone's ``requirements/`` and ``docs/scripts/`` are linked into the folder).
  A block that is, or whose every command is, in an earlier block of the same document or of an earlier
  document (README.md and docs/zoo.md share some) is not run again: it runs, or is listed, there.
* Every fence names its language. ``yaml``, ``text`` and other blocks are not run, except that a ``yaml``
  block whose first line is a comment naming a file (``# collapse.yml``) is saved under that name, for the
  commands after it.
* Shell blocks run with ``bash -e -o pipefail``; in a ``console`` block only the lines after ``$ `` are
  commands. Each command is shrunk to a budget of ``BUDGET`` environment steps first:

  - ``rl_zoo3 train`` (``python -m rl_zoo3.train``): ``-n BUDGET``; with ``-optimize`` also ``--n-trials 2
    --n-jobs 1`` (``--max-total-trials 2`` where given), ``--no-optim-plots``, and where not given
    ``--eval-episodes 2`` and ``--seed 10`` (whose first trials sample cheap hyperparameters);
  - ``rl_zoo3 enjoy`` and ``record_video``: ``-n 64``, and ``--no-render`` for ``enjoy``;
  - ``sb3_ppo_variants.benchmark learn`` and ``collapse``: ``--timesteps BUDGET``, only the first of the
    ``--tasks``, ``--algorithms`` (``ppo`` when not given), ``--seeds`` and ``--lr-scales``, and ``--workers 1``
    unless the command chooses its workers or a Ray cluster;
  - ``sb3_ppo_variants.benchmark cost``: the first ``--setting``, ``--threads`` and ``--algorithms``
    (``variant`` when not given), ``--repeats 1 --fps-repeats 0`` (``learn()``'s timing runs in
    tests/test_benchmark.py);
  - ``sb3_ppo_variants.benchmark throughput``: ``--timesteps 256``, the first of the ``--algorithms`` (``ppo``
    when not given), ``--seeds 0`` and ``--sb3-seeds``, ``--workers``, ``--group-size`` and ``--scaling-sizes`` 1;
  - ``sb3_ppo_variants.benchmark report``, ``study`` and ``agreement``: ``--bootstrap-reps 50``;
  - ``sb3_ppo_variants.zoo.evaluate``: ``-n BUDGET``, the first of the ``--seeds``, ``--episodes 2``;
  - ``sb3_ppo_variants.collapse collect-probe``: ``-n 64``.

  The placeholders ``GOOD.zip`` and ``BAD.zip`` (two saved CartPole-v1 PPO models) and ``RUN_DIR`` (a run
  folder with an SB3 ``progress.csv``) are created in the folder before a block that names them.
* Python blocks run as scripts, each in its own interpreter, with ``learn()`` of every SB3 algorithm capped
  at ``BUDGET`` steps.
* A block with a ``--storage postgresql://...`` URL runs in ``test_the_postgresql_blocks_run`` against a
  throwaway server (conftest's ``postgres_server``, skipped where the server binaries are missing): the
  credentials, host and database are replaced, the URL's form is kept.
* Blocks that another test runs (with the helpers of ``doc_blocks.py``), or that cannot run in a test, are
  listed in ``NOT_RUN_HERE`` with the reason and, where there is one, the test that runs them or the same
  commands; an entry that matches no block, or names a test that does not exist, fails.

The packages' commands are those of the installed package (the ``zoo`` fixture: rl-zoo3's hook needs the
install), run single-threaded and headless.
"""

from __future__ import annotations

import re

import pytest
from doc_blocks import (
    ALL_BLOCKS,
    BUDGET,
    DOCUMENTS,
    ROOT,
    SHELL,
    Block,
    DocumentRun,
    fenced_blocks,
    needs_postgres,
    new_folder,
    shell_script,
    shrink,
    yaml_file,
)

from sb3_ppo_variants.registry import ZOO_VARIANTS

# (document, how the block's first line begins, why it does not run here)
NOT_RUN_HERE = [
    (
        "README.md",
        "python -m rl_zoo3.train --algo ppo_logit --env CartPole-v1 -f logs/",
        "run as written, shrunk, after a plain install of the wheel, by "
        "tests/test_plain_install.py::test_the_readme_zoo_commands_run_after_a_plain_install",
    ),
    ("README.md", "make setup", "builds a new virtual environment from PyPI and runs the whole suite: .ci/run runs it"),
    (
        "README.md",
        "pip install -r requirements/torch-cpu.txt",
        "installs into the running environment from PyPI; "
        "tests/test_plain_install.py::test_the_readme_zoo_commands_run_after_a_plain_install installs the built wheel "
        "without extras in a new environment and runs the README's zoo commands, and "
        "tests/test_dependencies.py::test_the_module_is_declared checks what each extra declares",
    ),
    (
        "docs/benchmarks.md",
        "python -m rl_zoo3.train --algo ppo --env PongNoFrameskip-v4 --seed 0 -f logs/pong_seed",
        "Pong for 10M steps with subprocess environments; rl_zoo3.train on PongNoFrameskip-v4 runs in the README's "
        "zoo block and in tests/test_plain_install.py::test_the_readme_zoo_commands_run_after_a_plain_install",
    ),
    (
        "docs/benchmarks.md",
        "# LogitPPO with the shipped hyperparams/ppo_logit.yml atari entry",
        "Pong for 10M steps, resumed from the checkpoint saved at step 1M; rl_zoo3.train on PongNoFrameskip-v4 runs "
        "in the README's zoo block",
    ),
    ("docs/benchmarks.md", 'pip install "sb3-ppo-variants[ray,bench]"', "installs from PyPI on every machine"),
    (
        "docs/benchmarks.md",
        "# on the head node",
        "starts Ray on several machines; "
        "tests/test_benchmark_ray.py::test_grid_on_a_two_node_cluster_writes_every_run_as_a_local_run_would runs the "
        "same benchmark command with --ray-address on a two-node cluster",
    ),
    ("docs/benchmarks.md", "#!/bin/bash", "a SLURM batch script: needs a SLURM cluster"),
    (
        "docs/benchmarks.md",
        "# 2c. the second amendment",
        "--keep names the two settings chosen from the pilot's own runs, which qualify only with those runs; "
        "tests/test_extension_study.py::test_the_pilot_and_extension_commands_end_to_end runs pilot --keep, and "
        "the collapse command is the pilot's of the block before with other tasks and --lr-scales",
    ),
    (
        "docs/benchmarks.md",
        "# the third amendment's rule",
        "the same pilot --keep command as the second amendment's, which qualifies only with the pilot's own runs; "
        "tests/test_extension_study.py::test_the_pilot_and_extension_commands_end_to_end runs pilot --keep",
    ),
    (
        "docs/benchmarks.md",
        "python -m sb3_ppo_variants.benchmark throughput --output docs/results/throughput --compile",
        "tests/test_throughput.py::test_throughput_trains_both_engines_and_profiles_a_group runs the same command "
        "on a smaller grid, --compile included",
    ),
    (
        "docs/benchmarks.md",
        "python -m sb3_ppo_variants.benchmark throughput --output docs/results/throughput_minatar",
        "tests/test_throughput.py::test_throughput_of_the_eager_engine runs the same command on CartPole-v1, and "
        "tests/test_batched_minatar.py::test_one_update_gives_variant_ppos_parameters updates MinAtar Breakout's "
        "agents with the shared CNN",
    ),
    (
        "docs/benchmarks.md",
        "# the CPU cost of MinAtar Breakout with the shared CNN",
        "a measurement (16 MinAtar agents, two rollouts and updates, about 30 CPU-seconds); "
        "tests/test_batched_minatar.py::test_one_update_gives_variant_ppos_parameters builds and updates "
        "BatchedPPO(shared_trunk=True) on MinAtar Breakout",
    ),
    (
        "docs/benchmarks.md",
        "make pong",
        "trains Pong to 2M agent steps per algorithm (hours); "
        "tests/test_pong_resume.py::test_a_killed_zoo_run_continues_from_its_last_checkpoint kills a real zoo run, "
        "continues it with -i and snapshots it, and "
        "tests/test_pong_resume.py::test_train_runs_the_algorithms_at_once_and_snapshots_them_when_they_end runs the "
        "train action with stand-in runs",
    ),
    (
        "docs/collapse_monitor.md",
        "OMP_NUM_THREADS=1 PYTHONPATH=. python docs/scripts/collapse_showcase.py",
        "300k steps (4-8 minutes), and its report's --event 2 needs the run's second collapse",
    ),
    (
        "docs/collapse_monitor.md",
        "python -m sb3_ppo_variants.collapse_report runs/cartpole -o report.png",
        "--event 2 needs a run with two collapses; "
        "tests/test_collapse_report.py::test_html_report_embeds_the_figure_and_the_event_table runs both commands on "
        "a forced collapse with two",
    ),
]


def not_run_here(block: Block) -> list[str]:
    """The reasons ``NOT_RUN_HERE`` gives for this block (one at most)."""
    return [
        why
        for document, begins, why in NOT_RUN_HERE
        if block.document == document and block.first_line.startswith(begins)
    ]


def _runs_here(block: Block) -> bool:
    """Whether the ordered test runs the block (PostgreSQL blocks have their own test)."""
    return block.language in SHELL | {"python"} and not not_run_here(block) and not needs_postgres(block)


def _commands(block: Block) -> set[str]:
    return {line for line in shell_script(block).splitlines() if line.strip() and not line.lstrip().startswith("#")}


def _earlier_documents_commands(document: str) -> tuple[set[str], set[str]]:
    """The texts of the blocks, and the shell commands, of the documents before ``document`` (run here, in
    another test, or listed as not runnable with their reason)."""
    runnable = SHELL | {"python"}
    earlier = [
        b for b in ALL_BLOCKS if DOCUMENTS.index(b.document) < DOCUMENTS.index(document) and b.language in runnable
    ]
    return {b.text for b in earlier}, set().union(*(_commands(b) for b in earlier if b.language in SHELL))


@pytest.mark.slow
@pytest.mark.parametrize("document", DOCUMENTS)
def test_the_documents_blocks_run_in_order(zoo, tmp_path, document):
    run = DocumentRun(new_folder(tmp_path), zoo.environment())
    blocks_run, commands_run = _earlier_documents_commands(document)
    timings = []
    for block in fenced_blocks(document):
        if yaml_file(block):
            (run.folder / yaml_file(block)).write_text(block.text)
        if not _runs_here(block) or block.text in blocks_run:
            continue
        if block.language in SHELL and _commands(block) <= commands_run:
            continue
        timings.append(f"{block}: {run.run(block):.1f} s")
        blocks_run.add(block.text)
        commands_run |= _commands(block) if block.language in SHELL else set()
    print("\n".join(timings))


POSTGRES_BLOCKS = list({block.text: block for block in reversed(ALL_BLOCKS) if needs_postgres(block)}.values())


@pytest.mark.slow
@pytest.mark.parametrize("block", POSTGRES_BLOCKS, ids=str)
def test_the_postgresql_blocks_run(zoo, postgres_server, tmp_path, block):
    documented = re.findall(r"(postgresql[+\w]*)://", block.text)
    assert documented == ["postgresql"], f"{block}: the tests run the URL form postgresql:// only, got {documented}"
    assert postgres_server.url.startswith("postgresql://")
    storage = postgres_server.new_database(f"docs_{block.line}")
    DocumentRun(new_folder(tmp_path), zoo.environment()).run(block, storage=storage)


# --- the conventions themselves, and facts stated in several places ------------------------------------------------


def test_the_readme_shows_distributed_tuning_with_postgresql():
    assert any(block.document == "README.md" for block in POSTGRES_BLOCKS), "update the PostgreSQL part of this test"


def test_every_fence_names_its_language():
    unnamed = [str(block) for block in ALL_BLOCKS if not block.language]
    assert not unnamed, f"name the language of these blocks (bash, python, yaml, text, ...): {unnamed}"


def test_every_block_listed_as_not_run_exists_once_and_names_real_tests():
    for document, begins, reason in NOT_RUN_HERE:
        matching = [b for b in ALL_BLOCKS if b.document == document and b.first_line.startswith(begins)]
        assert len(matching) == 1, f"NOT_RUN_HERE's ({document!r}, {begins!r}) matches {len(matching)} blocks, not one"
        for path, name in re.findall(r"(tests/\w+\.py)::(\w+)", reason):
            assert f"def {name}(" in (ROOT / path).read_text(encoding="utf-8"), f"{path} has no test {name}"


def test_the_shrinking_rules():
    assert shrink("python -m rl_zoo3.train --algo ppo_logit --env CartPole-v1 -f logs/") == (
        f"python -m rl_zoo3.train --algo ppo_logit --env CartPole-v1 -f logs/ -n {BUDGET}"
    )
    assert shrink("rl_zoo3 train --algo ppo_variant -optimize --n-trials 50 --n-jobs 2 --max-total-trials 200") == (
        f"rl_zoo3 train --algo ppo_variant -optimize --n-trials 2 --n-jobs 1 --max-total-trials 2 -n {BUDGET} "
        "--no-optim-plots --seed 10 --eval-episodes 2"
    )
    assert shrink("python -m rl_zoo3.enjoy --algo ppo_logit -f logs/ -n 200") == (
        "python -m rl_zoo3.enjoy --algo ppo_logit -f logs/ -n 64 --no-render"
    )
    assert shrink("python -m sb3_ppo_variants.benchmark collapse --lr-scales 1 3 10 30 --seeds 0 1 --threads 1") == (
        f"python -m sb3_ppo_variants.benchmark collapse --lr-scales 1 --seeds 0 --threads 1 --timesteps {BUDGET} "
        "--algorithms ppo --workers 1"
    )
    assert shrink("python -m sb3_ppo_variants.benchmark collapse --engine batched --seeds $(seq 3 29)") == (
        f"python -m sb3_ppo_variants.benchmark collapse --engine batched --seeds 3 --timesteps {BUDGET} "
        "--algorithms ppo --workers 1"
    )
    assert shrink("OMP_NUM_THREADS=1 python -m sb3_ppo_variants.benchmark report --runs r --output o") == (
        "OMP_NUM_THREADS=1 python -m sb3_ppo_variants.benchmark report --runs r --output o --bootstrap-reps 50"
    )
    assert shrink("python -m rl_zoo3.train --eval-freq -1 -n 10000 --seed 0") == (
        f"python -m rl_zoo3.train --eval-freq -1 -n {BUDGET} --seed 0"
    )
    assert shrink("python -m sb3_ppo_variants.benchmark cost --setting mlp cnn --threads 1 2 --repeats 9 5") == (
        "python -m sb3_ppo_variants.benchmark cost --setting mlp --threads 1 --repeats 1 --algorithms variant "
        "--fps-repeats 0"
    )
    assert shrink("python -m sb3_ppo_variants.benchmark cost --setting masked recurrent --repeats 25 25") == (
        "python -m sb3_ppo_variants.benchmark cost --setting masked --repeats 1 --algorithms maskable_variant "
        "--fps-repeats 0"
    )
    assert shrink("python -m sb3_ppo_variants.benchmark throughput --output out --seeds $(seq 0 19)") == (
        "python -m sb3_ppo_variants.benchmark throughput --output out --seeds 0 --timesteps 256 --algorithms ppo "
        "--sb3-seeds 1 --workers 1 --group-size 1 --scaling-sizes 1"
    )
    assert shrink("python -m sb3_ppo_variants.benchmark agreement --runs a=x b=y --output out") == (
        "python -m sb3_ppo_variants.benchmark agreement --runs a=x b=y --output out --bootstrap-reps 50"
    )
    untouched = 'python -c "import numpy as np; print(np.pi)"'
    assert shrink(untouched) == untouched


def test_the_docs_name_every_zoo_id():
    ids = {variant.zoo_id for variant in ZOO_VARIANTS}
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Use with rl-zoo3") :]
    introduction = section[: section.index("```")]
    assert set(re.findall(r"`(ppo_\w+)`", introduction)) == ids, "README's list of zoo ids"
    tables: list[set[str]] = [set()]
    for line in (ROOT / "docs" / "zoo.md").read_text(encoding="utf-8").splitlines():
        if not line.startswith("|"):
            tables.append(set())
        elif row := re.match(r"\| `(ppo_\w+)` \|", line):
            tables[-1].add(row[1])
    tables = [table for table in tables if table]
    assert len(tables) == 2, "docs/zoo.md's table of ids and its table of samplers"
    for table in tables:
        assert table == ids, f"docs/zoo.md lists {sorted(table)}, the registry has {sorted(ids)}"


COST_COMMAND = re.compile(r"sb3_ppo_variants\.benchmark cost --output docs/results/cost (?:[^`\n\\]|\\\n)*")


def test_the_cost_benchmark_command_is_the_same_everywhere():
    sources = {
        name: (ROOT / name).read_text(encoding="utf-8") for name in ("README.md", "docs/benchmarks.md", "Makefile")
    }
    commands = {
        (name, " ".join(match.replace("\\\n", " ").split()))
        for name, text in sources.items()
        for match in COST_COMMAND.findall(text)
    }
    assert {name for name, _ in commands} == set(sources), commands
    assert len({command for _, command in commands}) == 1, commands
