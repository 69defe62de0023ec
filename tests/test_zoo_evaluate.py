"""``python -m sb3_ppo_variants.zoo.evaluate``: real zoo runs per seed, scored, written to JSON, resumable."""

import json

import pytest


@pytest.mark.slow
def test_evaluate_trains_scores_and_resumes(zoo, tmp_path):
    output = tmp_path / "result.json"
    args = [
        zoo.python, "-m", "sb3_ppo_variants.zoo.evaluate", "--algo", "ppo_logit", "--env", "CartPole-v1",
        "--seeds", "0", "1", "-n", "512", "--episodes", "2", "--folder", str(tmp_path / "runs"),
        "--output", str(output),
    ]  # fmt: skip
    first = zoo.run(args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    result = json.loads(output.read_text())
    assert result["algo"] == "ppo_logit" and result["n_timesteps"] == 512
    assert [entry["seed"] for entry in result["per_seed"]] == [0, 1]
    for entry in result["per_seed"]:
        assert len(entry["returns"]) == 2
        assert all(9 <= value <= 500 for value in entry["returns"])  # CartPole's bounds
        assert (tmp_path / "runs" / f"seed{entry['seed']}" / "ppo_logit").is_dir()
    assert result["mean_over_seeds"] == pytest.approx(sum(e["mean_return"] for e in result["per_seed"]) / 2)
    for key in ("command", "date", "torch", "stable_baselines3", "rl_zoo3", "hardware"):
        assert result[key]

    # a second call finds the finished runs and only evaluates again
    second = zoo.run(args, cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "Saving to" not in second.stdout
    assert json.loads(output.read_text())["per_seed"] == result["per_seed"]
