"""The advanced model on the shipped data: config rules, the original command line, training on a
real fold, and exports that load and act exactly like training's deterministic policy."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sentio.cli import main
from sentio_core.config import TrainConfig
from sentio_core.env import ObservationLayout, new_book, observation
from sentio_core.export import load_policy, policy_header, save_policy
from sentio_core.learner import SentioMaskablePPO, SentioPPO
from sentio_core.networks import BarExtractor, SentioMaskablePolicy, SentioPolicy
from sentio_core.policies import model_spec
from sentio_core.train import Budget, train_policy

from .fixtures_market import SMOKE, real_fold

ALL = ("train.policy=transformer", "train.d_model=16", "train.transformer_heads=2", "train.transformer_layers=1",
       "train.critic=quantile", "train.n_quantiles=11", "train.cvar_weight=0.3", "train.regime_gating=true",
       "train.adaptive_kl=true")


@pytest.mark.parametrize("values, needle", [
    ({"d_model": 30, "transformer_heads": 4}, "transformer_heads (4) must divide train.d_model (30)"),
    ({"cvar_weight": 0.5}, "cvar_weight > 0 needs train.critic: quantile"),
    ({"cvar_weight": 1.5, "critic": "quantile"}, "less than or equal to 1"),
    ({"policy": "lstm"}, "'mlp' or 'transformer'"),
])
def test_model_settings_are_checked(values, needle):
    with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        TrainConfig.model_validate(values)


def test_gating_needs_regime_probabilities_in_the_observation():
    cfg = TrainConfig(regime_gating=True)
    with pytest.raises(ValueError, match="regime_gating needs the regime probabilities"):
        model_spec(cfg, ObservationLayout(2, 3), ["a", "b", "c"], np.zeros(3), np.ones(3))


@pytest.fixture(scope="module")
def advanced():
    """Both algorithms with every option on, trained briefly on the smoke fold."""
    torch.set_num_threads(1)
    fold = real_fold(ALL)
    models = {alg: train_policy(alg, fold.market, fold.cfg, fold.train_rows, 0, Budget(timesteps=512)).model
              for alg in ("maskable_ppo", "ppo")}
    return fold, models


def test_every_option_builds_sentio_classes_on_the_real_fold(advanced):
    fold, models = advanced
    assert isinstance(models["maskable_ppo"], SentioMaskablePPO) and isinstance(models["ppo"], SentioPPO)
    assert isinstance(models["maskable_ppo"].policy, SentioMaskablePolicy) and isinstance(models["ppo"].policy, SentioPolicy)
    extractor = models["ppo"].policy.features_extractor
    assert isinstance(extractor, BarExtractor)
    regimes = [n for n in fold.market.feature_names if n.startswith("regime_")]
    assert extractor.spec.regime_columns == [fold.market.feature_names.index(n) for n in regimes]
    assert extractor.spec.lookback == fold.cfg.env.lookback_bars and extractor.spec.n_quantiles == 11


@pytest.mark.parametrize("algorithm", ["maskable_ppo", "ppo"])
def test_advanced_export_acts_like_training(advanced, tmp_path, algorithm):
    """The export's header names the network; loaded, it picks exactly sb3's deterministic actions
    on the fold's test observations (with their masks for MaskablePPO)."""
    fold, models = advanced
    model = models[algorithm]
    header = policy_header(model, algorithm)
    assert header["model"]["policy"] == "transformer" and header["model"]["critic"] == "quantile"
    assert header["model"]["regime_gating"] is True
    save_policy(model, algorithm, tmp_path / "m", {"note": "test"})
    loaded = load_policy(tmp_path / "m", require_metadata=True)
    assert loaded._mlp is None  # not sb3's MLP: one observation goes through the whole network too
    a, b = fold.test_rows
    obs = np.stack([_observation(fold, t) for t in range(a, b)])
    masks = np.ones((len(obs), loaded.n_actions), dtype=bool)
    masks[::3, -1] = False  # some rows forbid the largest level
    if algorithm == "maskable_ppo":
        expected, _ = model.predict(obs, action_masks=masks, deterministic=True)
        assert np.array_equal(loaded.act(obs, masks), expected)
        assert [int(loaded.act(o, m)) for o, m in zip(obs[:20], masks)] == expected[:20].tolist()
    else:
        expected, _ = model.predict(obs, deterministic=True)
        assert np.array_equal(loaded.act(obs), expected)
        assert [int(loaded.act(o)) for o in obs[:20]] == expected[:20].tolist()


def _observation(fold, t: int) -> np.ndarray:
    """The observation at the close of ``t`` of a flat book, its exposure value varied so the state
    token differs between rows."""
    obs = observation(fold.market, t, fold.cfg.env.lookback_bars, new_book(fold.market, fold.cfg.env.initial_equity_usd))
    obs[ObservationLayout.of(fold.market, fold.cfg).window_size] = 0.1 * (t % 5)  # the state's first value: exposure
    return obs


def test_original_flags_map_onto_the_config(tmp_path, capsys):
    """``--model-type transformer_ppo`` and the original flags train and export the network they name."""
    out = tmp_path / "tp"
    code = main(["train", "--model-type", "transformer_ppo", "--transformer-layers", "1", "--transformer-heads", "2",
                 "--d-model", "16", "--use-distributional-critic", "--n-quantiles", "11", "--cvar-alpha", "0.1",
                 "--cvar-weight", "0.2", "--use-regime-gating", "--timesteps", "256", "--output", str(out),
                 "--config", str(SMOKE), "--set", "train.seeds=1"])
    assert code == 0, capsys.readouterr().err[-2000:]
    meta = json.loads((tmp_path / "tp-metadata.json").read_text())
    assert meta["algorithm"] == "maskable_ppo"
    assert {k: meta["model"][k] for k in ("policy", "layers", "heads", "d_model", "critic", "n_quantiles", "regime_gating")} == {
        "policy": "transformer", "layers": 1, "heads": 2, "d_model": 16, "critic": "quantile", "n_quantiles": 11,
        "regime_gating": True}
    objective = meta["training"]["objective"]
    assert objective["cvar_alpha"] == 0.1 and objective["cvar_weight"] == 0.2 and objective["critic"] == "quantile"
    assert load_policy(out).model["policy"] == "transformer"


@pytest.mark.parametrize("argv, needle", [
    (["--d-model", "30"], "must divide train.d_model (30)"),
    (["--cvar-weight", "0.5"], "cvar_weight > 0 needs train.critic: quantile"),
    (["--n-quantiles", "1"], "--n-quantiles: input should be greater than or equal to 2"),
])
def test_bad_model_flags_are_usage_errors(argv, needle, capsys):
    assert main(["train", *argv, "--config", str(SMOKE)]) == 2
    assert needle in capsys.readouterr().err


def test_help_lists_the_original_flags(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for flag in ("--use-transformer", "--transformer-layers", "--transformer-heads", "--d-model",
                 "--use-distributional-critic", "--n-quantiles", "--cvar-alpha", "--use-regime-gating", "transformer_ppo"):
        assert flag in text


def test_same_config_and_seed_give_the_same_advanced_weights():
    """The horizon draws of the distributional targets come from the model's seed: two trainings
    with every option on are bit-identical."""
    torch.set_num_threads(1)
    fold = real_fold(ALL)
    a, b = (train_policy("maskable_ppo", fold.market, fold.cfg, fold.train_rows, 5, Budget(timesteps=256)).model
            for _ in range(2))
    sa, sb = a.policy.state_dict(), b.policy.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    c = train_policy("maskable_ppo", fold.market, fold.cfg, fold.train_rows, 6, Budget(timesteps=256)).model
    assert not all(torch.equal(sa[k], c.policy.state_dict()[k]) for k in sa)
