"""``throughput``: both engines train the same grid in one command; the figures add up from the run files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sb3_ppo_variants.benchmark.__main__ import main


@pytest.mark.slow
def test_throughput_trains_both_engines_and_profiles_a_group(tmp_path: Path) -> None:
    output = tmp_path / "out"
    arguments = ["throughput", "--output", str(output), "--algorithms", "ppo", "logit", "--seeds", "0", "1"]
    assert (
        main(
            [
                *arguments,
                "--timesteps",
                "256",
                "--sb3-seeds",
                "1",
                "--workers",
                "1",
                "--group-size",
                "4",
                "--scaling-sizes",
                "1",
                "2",
                "--compile",
                "--compiled-only",
                "--profile-timesteps",
                "512",
            ]
        )
        == 0
    )
    result = json.loads((output / "throughput.json").read_text())
    # 8 environments × 32-step rollouts past 256 steps: every run trains to 1 024 steps
    # --compiled-only: the compiled step alone
    assert "batched" not in result and (result["batched_compiled"]["runs"], result["sb3"]["runs"]) == (4, 2)
    assert result["batched_compiled"]["steps"] == 4 * 1024
    assert result["sb3"]["steps"] == 2 * 1024
    for engine in ("batched_compiled", "sb3"):
        entry = result[engine]
        assert entry["cpu_seconds"] > 0 and entry["steps_per_cpu_second"] == entry["steps"] / entry["cpu_seconds"]
    compiled = result["batched_compiled"]["steps_per_cpu_second"] / result["sb3"]["steps_per_cpu_second"]
    assert result["ratio_per_cpu_second_compiled"] == pytest.approx(compiled)
    profile = result["profile"]
    # the grid's first group: ppo and logit share one, of 4 agents (one compilation)
    assert profile["agents"] == 4 and profile["algorithms"] == ["ppo", "logit"] and profile["timesteps"] == 512
    assert 0 < profile["environment_step_seconds"] < profile["collect_rollout_seconds"]
    shares = profile["collect_rollout_share"] + profile["update_share"] + profile["evaluate_share"]
    assert 0.8 < shares <= 1.0
    assert result["settings"]["sb3_seeds"] == [0]
    assert result["settings"]["group_size"] == 4
    minibatch = result["minibatch"]
    assert minibatch["agents"] == 4 and minibatch["algorithms"] == ["ppo", "logit"]
    assert all(value > 0 for value in minibatch["phases_ms"].values())
    assert minibatch["step_ms"] == pytest.approx(sum(minibatch["phases_ms"].values()), abs=0.01)
    assert set(minibatch["per_agent_ms"]) == {"1", "2"} and all(minibatch["per_agent_ms"].values())
    assert set(minibatch["step_without_profiler_ms"]) == {"eager", "compiled"}
    assert all(value > 0 for value in minibatch["step_without_profiler_ms"].values())
    markdown = (output / "throughput.md").read_text()
    assert "| batched, compiled step | 4 | 4,096 |" in markdown and "| batched |" not in markdown
    assert result["settings"]["compile_step"] is True and result["settings"]["compiled_only"] is True


def test_throughput_of_the_eager_engine(tmp_path: Path) -> None:
    output = tmp_path / "out"
    arguments = ["throughput", "--output", str(output), "--algorithms", "ppo", "--seeds", "0", "1", "--workers", "1"]
    with pytest.raises(SystemExit, match="--compiled-only needs --compile"):
        main([*arguments, "--compiled-only"])
    sizes = ["--timesteps", "256", "--sb3-seeds", "1", "--group-size", "2", "--scaling-sizes", "1"]
    assert main([*arguments, *sizes]) == 0
    result = json.loads((output / "throughput.json").read_text())
    assert "batched_compiled" not in result and (result["batched"]["runs"], result["sb3"]["runs"]) == (2, 1)
    ratio = result["batched"]["steps_per_cpu_second"] / result["sb3"]["steps_per_cpu_second"]
    assert result["ratio_per_cpu_second"] == pytest.approx(ratio)
    assert result["profile"]["timesteps"] == 256 and "step_without_profiler_ms" not in result["minibatch"]
    markdown = (output / "throughput.md").read_text()
    assert "| batched | 2 | 2,048 |" in markdown and f"Batched / SB3: ×{ratio:.1f} per CPU-second" in markdown


def test_throughput_side_by_side_trains_both_engines_at_once(tmp_path: Path) -> None:
    output = tmp_path / "out"
    arguments = ["throughput", "--output", str(output), "--algorithms", "ppo", "--seeds", "0", "1", "--workers", "2"]
    with pytest.raises(SystemExit, match="--side-by-side trains one batched grid"):
        main([*arguments, "--side-by-side", "--compile"])
    sizes = ["--timesteps", "256", "--sb3-seeds", "1", "--group-size", "2", "--scaling-sizes", "1"]
    assert main([*arguments, *sizes, "--side-by-side"]) == 0
    result = json.loads((output / "throughput.json").read_text())
    assert (result["batched"]["runs"], result["sb3"]["runs"]) == (2, 1)
    assert (result["batched"]["steps"], result["sb3"]["steps"]) == (2 * 1024, 1024)
    for engine in ("batched", "sb3"):
        entry = result[engine]
        assert entry["workers"] == 1 and entry["cpu_seconds"] > 0 and entry["peak_worker_rss_gib"] > 0.1
        assert entry["steps_per_cpu_second"] == entry["steps"] / entry["cpu_seconds"]
    ratio = result["batched"]["steps_per_cpu_second"] / result["sb3"]["steps_per_cpu_second"]
    assert result["ratio_per_cpu_second"] == pytest.approx(ratio) and result["settings"]["side_by_side"] is True
    assert (
        "Side by side: both engines trained at the same time, 1 worker process(es) each"
        in (output / "throughput.md").read_text()
    )


def test_side_by_side_stops_the_other_command_when_one_fails(tmp_path: Path) -> None:
    import sys

    from sb3_ppo_variants.benchmark.throughput import _side_by_side

    commands = {
        "batched": [sys.executable, "-c", "import time; time.sleep(60)"],
        "sb3": [sys.executable, "-c", "print('no such task'); raise SystemExit(3)"],
    }
    with pytest.raises(RuntimeError, match=r"the sb3 engine's command failed \(3\):\nno such task"):
        _side_by_side(commands, tmp_path)
    measured = _side_by_side({"sb3": [sys.executable, "-c", "sum(range(10**7))"]}, tmp_path)
    assert 0 < measured["sb3"]["cpu_seconds"] and 0 < measured["sb3"]["wall_seconds"] < 60
