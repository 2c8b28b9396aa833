"""Export round trip: the loaded policy acts exactly like sb3's own deterministic ``predict``."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3.common.vec_env import DummyVecEnv

from sentio_core.config import TrainConfig
from sentio_core.export import FORMAT, LoadedPolicy, clear_argmax, export_paths, load_policy, publish, save_policy
from sentio_core.files import DataError
from sentio_core.policies import build_model

OBS_DIM, N_ACTIONS = 6, 3


class ToyMaskedEnv(gym.Env):
    """Six Gaussian features, three actions, a random non-empty mask per step, 16-step episodes.

    Reward +1 when the action equals ``argmax(obs[:3])`` and that action is allowed, so training
    moves the logits away from the near-uniform initial policy.
    """

    def __init__(self, seed: int = 0):
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(OBS_DIM,), dtype=np.float32)
        self.action_space = gym.spaces.Discrete(N_ACTIONS)
        self._rng = np.random.default_rng(seed)
        self._obs = np.zeros(OBS_DIM, dtype=np.float32)
        self._mask = np.ones(N_ACTIONS, dtype=bool)
        self._t = 0

    def _draw(self) -> np.ndarray:
        self._obs = self._rng.normal(size=OBS_DIM).astype(np.float32)
        self._mask = random_masks(self._rng, 1)[0]
        return self._obs

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._t = 0
        return self._draw(), {}

    def step(self, action):
        reward = float(action == int(np.argmax(self._obs[:3])) and self._mask[action])
        self._t += 1
        return self._draw(), reward, False, self._t >= 16, {}

    def action_masks(self) -> np.ndarray:
        return self._mask.copy()


def random_masks(rng: np.random.Generator, n: int) -> np.ndarray:
    """``(n, N_ACTIONS)`` random booleans, each row with at least one True."""
    masks = rng.random((n, N_ACTIONS)) < 0.6
    masks[np.arange(n), rng.integers(0, N_ACTIONS, n)] = True
    return masks


def trained(algorithm: str):
    cfg = TrainConfig(timesteps=256, n_envs=1, n_steps=64, batch_size=32, n_epochs=1, net_arch=[16, 16], device="cpu")
    model = build_model(algorithm, DummyVecEnv([lambda: ToyMaskedEnv(seed=1)]), cfg, seed=3)
    return model.learn(192)


@pytest.fixture(scope="module")
def models() -> dict:
    return {alg: trained(alg) for alg in ("maskable_ppo", "ppo")}


@pytest.fixture(scope="module")
def batch() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(11)
    return rng.normal(size=(50, OBS_DIM)).astype(np.float32) * 2, random_masks(rng, 50)


@pytest.fixture(scope="module")
def exported(models, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("export")
    return {alg: save_policy(m, alg, out / alg, {"note": alg}) for alg, m in models.items()}


def test_maskable_round_trip_matches_sb3_predict(models, exported, batch):
    obs, masks = batch
    loaded = load_policy(exported["maskable_ppo"][0])
    ours = loaded.act(obs, masks)
    theirs, _ = models["maskable_ppo"].predict(obs, action_masks=masks, deterministic=True)
    np.testing.assert_array_equal(ours, theirs)
    assert ours.dtype == np.int64 and masks[np.arange(50), ours].all()
    one = [int(loaded.act(o, m)) for o, m in zip(obs, masks)]
    assert one == ours.tolist()


def test_ppo_round_trip_matches_sb3_predict_and_respects_a_mask(models, exported, batch):
    obs, masks = batch
    loaded = load_policy(exported["ppo"][0])
    np.testing.assert_array_equal(loaded.act(obs), models["ppo"].predict(obs, deterministic=True)[0])
    masked = loaded.act(obs, masks)
    assert masks[np.arange(50), masked].all()
    probs = loaded.action_probabilities(obs, masks)
    np.testing.assert_array_equal(masked, probs.argmax(axis=1))


@pytest.mark.parametrize("algorithm", ["maskable_ppo", "ppo"])
@pytest.mark.parametrize("masked", [True, False], ids=["mask", "no-mask"])
def test_probabilities_are_sb3_distributions_bit_for_bit(models, exported, batch, algorithm, masked):
    """The loaded policy skips sb3's distribution objects (their checks cost more than the network);
    its probabilities are still theirs to the bit (the reference: ``get_distribution``)."""
    obs, masks = batch
    policy = models[algorithm].policy
    x = torch.as_tensor(obs)
    with torch.no_grad():
        if algorithm == "maskable_ppo":
            want = policy.get_distribution(x, action_masks=masks if masked else None).distribution.probs
        else:
            dist = policy.get_distribution(x).distribution
            if masked:
                dist = torch.distributions.Categorical(logits=torch.where(torch.as_tensor(masks), dist.logits, -1e8))
            want = dist.probs
    got = load_policy(exported[algorithm][0]).action_probabilities(obs, masks if masked else None)
    np.testing.assert_array_equal(got, want.numpy())


@pytest.mark.parametrize("algorithm", ["maskable_ppo", "ppo"])
def test_one_observation_takes_the_fast_path_to_the_same_action(exported, batch, algorithm):
    """One observation of an MLP policy runs the actor's layers directly and reads the masked
    argmax off the raw logits: the logits are the modules' to the bit, and the action is the exact
    path's (sb3's probabilities) for every observation and mask, and without a mask."""
    obs, masks = batch
    loaded = load_policy(exported[algorithm][0])
    assert loaded._mlp is not None
    h = torch.as_tensor(obs)
    for weight, bias, activation in loaded._mlp:
        h = torch.nn.functional.linear(h, weight, bias)
        h = h if activation is None else activation(h)
    with torch.no_grad():
        np.testing.assert_array_equal(h.numpy(), loaded._logits(torch.as_tensor(obs)).numpy())
    for mask in (masks, None):
        exact = loaded.action_probabilities(obs, mask).argmax(axis=1)
        fast = [loaded.act(o, None if mask is None else m) for o, m in zip(obs, masks)]
        assert all(a.shape == () and a.dtype == np.int64 for a in fast)
        assert [int(a) for a in fast] == exact.tolist()


def test_clear_argmax_leaves_close_calls_to_the_exact_path():
    """The top allowed logit when it clears every other allowed one by 1e-4 (1 + max |logit|), else
    None: ties, a rounding error apart, non-finite logits, a top the forbidden -1e8 could rival."""
    logits = np.array([0.5, 2.0, 1.0], dtype=np.float32)
    assert clear_argmax(logits, None) == 1
    assert clear_argmax(logits, np.array([True, False, True])) == 2  # the top is forbidden: the best allowed
    assert clear_argmax(logits, np.array([True, False, False])) == 0  # one allowed
    assert clear_argmax(np.array([1.0, 1.0, 0.0], dtype=np.float32), None) is None  # a tie
    near = np.array([1.0, np.nextafter(np.float32(1.0), np.float32(2.0)), 0.0], dtype=np.float32)
    assert clear_argmax(near, None) is None  # one float32 step apart
    assert clear_argmax(near, np.array([True, False, True])) == 0  # the close call is forbidden
    assert clear_argmax(np.array([1.0, 1.0 + 2e-4, 0.0], dtype=np.float32), None) == 1
    assert clear_argmax(np.array([1.0, 1.0 + 5e-5, 0.0], dtype=np.float32), None) is None
    assert clear_argmax(np.array([1000.0, 1000.05, 0.0], dtype=np.float32), None) is None  # the reach grows with the scale
    assert clear_argmax(np.array([np.nan, 1.0, 0.0], dtype=np.float32), None) is None
    assert clear_argmax(np.array([-2e6, -3e6, 0.0], dtype=np.float32), np.array([True, True, False])) is None


def test_action_probabilities_sum_to_one_and_zero_masked(exported, batch):
    obs, masks = batch
    loaded = load_policy(exported["maskable_ppo"][0])
    probs = loaded.action_probabilities(obs, masks)
    assert probs.shape == (50, N_ACTIONS)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert (probs[~masks] == 0).all()
    assert loaded.action_probabilities(obs[0]).shape == (N_ACTIONS,)


def test_pth_is_plain_weights_only_data(exported):
    pth, meta = exported["maskable_ppo"]
    payload = torch.load(pth, weights_only=True, map_location="cpu")
    assert {k: payload[k] for k in ("format", "algorithm", "obs_dim", "n_actions", "net_arch", "model")} == {
        "format": FORMAT, "algorithm": "maskable_ppo", "obs_dim": OBS_DIM, "n_actions": N_ACTIONS, "net_arch": [16, 16], "model": None}
    assert all(t.device.type == "cpu" for t in payload["state_dict"].values())
    doc = json.loads(meta.read_text())
    assert doc["note"] == "maskable_ppo" and doc["format"] == FORMAT and doc["created_at"].endswith("+00:00")
    loaded = load_policy(pth.with_name("maskable_ppo"))  # the stem works too
    assert loaded.metadata == doc and (loaded.algorithm, loaded.obs_dim, loaded.n_actions) == ("maskable_ppo", 6, 3)


def test_dotted_stem_keeps_its_dots(models, tmp_path, batch):
    pth, meta = save_policy(models["ppo"], "ppo", tmp_path / "new" / "model.v1", {"created_at": "fixed"})
    assert (pth.name, meta.name) == ("model.v1.pth", "model.v1-metadata.json")
    assert sorted(p.name for p in pth.parent.iterdir()) == ["model.v1-metadata.json", "model.v1.pth"]  # no temp files left
    loaded = load_policy(tmp_path / "new" / "model.v1")
    assert loaded.metadata["created_at"] == "fixed"
    np.testing.assert_array_equal(loaded.act(batch[0]), load_policy(pth).act(batch[0]))


def test_missing_and_corrupt_files_name_the_file(exported, tmp_path):
    with pytest.raises(DataError, match=r"nowhere\.pth.*\[exists\]") as err:
        load_policy(tmp_path / "nowhere")
    assert err.value.file.endswith("nowhere.pth")

    pth, meta = export_paths(tmp_path / "broken")
    pth.write_bytes(b"not a torch file")
    with pytest.raises(DataError, match=r"broken\.pth.*\[readable\]"):
        load_policy(pth, require_metadata=False)

    pth.write_bytes(exported["ppo"][0].read_bytes())
    with pytest.raises(DataError, match=r"broken-metadata\.json.*\[exists\]"):
        load_policy(pth)
    assert load_policy(pth, require_metadata=False).metadata == {}
    meta.write_text("{not json")
    with pytest.raises(DataError, match=r"broken-metadata\.json.*\[readable\]"):
        load_policy(pth)
    meta.write_text(json.dumps({"algorithm": "ppo"}))
    with pytest.raises(DataError, match=r"broken-metadata\.json.*\[content hash\].*no weights_sha256"):
        load_policy(pth)


def test_the_pair_carries_one_content_hash_checked_before_torch_reads(exported, tmp_path):
    """Weights from one export beside the metadata of another, or weights changed after export, are
    refused by their SHA-256 before torch reads a byte of them; a header that disagrees is named."""
    import hashlib
    import shutil

    pth, meta = export_paths(tmp_path / "mixed")
    shutil.copy(exported["ppo"][0], pth)
    shutil.copy(exported["maskable_ppo"][1], meta)
    with pytest.raises(DataError, match=r"mixed\.pth.*\[content hash\].*different exports"):
        load_policy(pth)
    shutil.copy(exported["ppo"][1], meta)
    assert load_policy(pth).algorithm == "ppo"
    data = pth.read_bytes()
    pth.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # one bit changed
    with pytest.raises(DataError, match=r"mixed\.pth.*\[content hash\]"):
        load_policy(pth)
    shutil.copy(exported["ppo"][0], pth)
    sha = hashlib.sha256(pth.read_bytes()).hexdigest()
    meta.write_text(json.dumps({"algorithm": "maskable_ppo", "weights_sha256": sha}))
    with pytest.raises(DataError, match=r"\[matches weights\]"):
        load_policy(pth)


def test_foreign_torch_files_are_refused(tmp_path):
    other = tmp_path / "other.pth"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(DataError, match=r"other\.pth.*\[format\]"):
        load_policy(other, require_metadata=False)
    torch.save({"x": DataError("a", "b", "c")}, other)  # a pickled class: weights_only refuses it
    with pytest.raises(DataError, match=r"\[weights only\].*DataError"):
        load_policy(other, require_metadata=False)


def test_shape_errors_name_the_expected_shape(exported):
    loaded = load_policy(exported["maskable_ppo"][0])
    with pytest.raises(ValueError, match=r"expected \(6,\) or \(N, 6\)"):
        loaded.act(np.zeros((4, 5)))
    with pytest.raises(ValueError, match=r"expected \(4, 3\)"):
        loaded.act(np.zeros((4, 6)), np.ones((4, 2), dtype=bool))
    with pytest.raises(ValueError, match="allows no action"):
        loaded.act(np.zeros(6), np.zeros(3, dtype=bool))
    with pytest.raises(ValueError, match="NaN"):
        loaded.act(np.full(6, np.nan))


def test_save_refuses_wrong_algorithm_and_conflicting_metadata(models, tmp_path):
    with pytest.raises(ValueError, match="not the MaskableActorCriticPolicy"):
        save_policy(models["ppo"], "maskable_ppo", tmp_path / "x", {})
    with pytest.raises(ValueError, match="disagree"):
        save_policy(models["ppo"], "ppo", tmp_path / "x", {"obs_dim": 7})
    assert not list(tmp_path.iterdir())


def test_weights_must_fit_the_network(exported, tmp_path):
    payload = torch.load(exported["ppo"][0], weights_only=True)
    payload["net_arch"] = [8, 8]
    torch.save(payload, tmp_path / "mis.pth")
    with pytest.raises(DataError, match=r"mis\.pth.*\[fits network\]"):
        load_policy(tmp_path / "mis.pth", require_metadata=False)
    assert isinstance(load_policy(exported["ppo"][0]), LoadedPolicy)


def test_ties_break_to_the_lowest_allowed_action_like_sb3(models, tmp_path, batch):
    """With the action head zeroed every logit is equal: sb3 and the export both take the first allowed action."""
    obs, masks = batch
    model = models["maskable_ppo"]
    saved = {k: v.clone() for k, v in model.policy.state_dict().items()}
    try:
        with torch.no_grad():
            model.policy.action_net.weight.zero_()
            model.policy.action_net.bias.zero_()
        pth, _ = save_policy(model, "maskable_ppo", tmp_path / "flat", {})
        theirs, _ = model.predict(obs, action_masks=masks, deterministic=True)
    finally:
        model.policy.load_state_dict(saved)
    loaded = load_policy(pth)
    ours = loaded.act(obs, masks)
    np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(ours, masks.argmax(axis=1))
    assert [int(loaded.act(o, m)) for o, m in zip(obs, masks)] == ours.tolist()  # one at a time: the exact fallback


def test_publish_copies_the_weights_with_new_metadata(exported, tmp_path, batch):
    source, _ = exported["maskable_ppo"]
    pth, meta = publish(source, {"alias": "champion", "created_at": "t0"}, tmp_path / "trained_models" / "sentio.v2")
    loaded = load_policy(pth)
    assert len(loaded.metadata.pop("weights_sha256")) == 64
    assert loaded.metadata == {"alias": "champion", "created_at": "t0", "format": FORMAT, "algorithm": "maskable_ppo",
                               "obs_dim": OBS_DIM, "n_actions": N_ACTIONS, "net_arch": [16, 16], "model": None}
    np.testing.assert_array_equal(loaded.act(*batch), load_policy(source).act(*batch))
    with pytest.raises(ValueError, match="disagree"):
        publish(source, {"algorithm": "ppo"}, tmp_path / "other")
    with pytest.raises(DataError, match=r"gone\.pth.*\[exists\]"):
        publish(tmp_path / "gone.pth", {}, tmp_path / "other")
    assert not list(tmp_path.glob("other*"))


def test_a_previous_format_is_refused_with_what_to_do(exported, tmp_path):
    """An export of the earlier format (same weights layout, metadata without a schema) is not
    guessed at: the loader names the file and the format and says how to re-export it."""
    payload = torch.load(exported["maskable_ppo"][0], weights_only=True)
    old = tmp_path / "old.pth"
    torch.save(payload | {"format": "sentio-policy/1"}, old)
    (tmp_path / "old-metadata.json").write_text(json.dumps({"format": "sentio-policy/1"}))
    with pytest.raises(DataError, match=r"old-metadata\.json.*\[format\].*sentio-policy/1.*sentio train.*--refresh"):
        load_policy(old)
    (tmp_path / "old-metadata.json").unlink()
    with pytest.raises(DataError, match=r"old\.pth.*\[format\].*sentio-policy/1.*sentio train.*--refresh"):
        load_policy(old, require_metadata=False)


def test_metadata_that_is_not_a_sentio_export_is_named_when_read_as_one(exported):
    from sentio_core.export import read_metadata

    loaded = load_policy(exported["maskable_ppo"][0])
    with pytest.raises(DataError, match=r"\[export metadata\].*build_metadata"):
        read_metadata(loaded, exported["maskable_ppo"][1])
