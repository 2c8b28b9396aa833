"""Export of a trained policy for the trading application: ``STEM.pth`` and ``STEM-metadata.json``.

``STEM.pth`` is a plain dict that ``torch.load(weights_only=True)`` reads (no pickled classes)::

    {"format": "sentio-policy/3", "algorithm": "maskable_ppo" | "ppo", "obs_dim": int,
     "n_actions": int, "net_arch": [int, ...], "model": {...} | None, "state_dict": {name: tensor (CPU)}}

``model`` is the network beyond sb3's MLP (:class:`sentio_core.networks.ModelSpec`: transformer,
quantile critic, regime gating); None, or absent in an export written before it existed, is the MLP.

``STEM-metadata.json`` holds the same header fields, ``created_at`` (ISO 8601, UTC) and, for a
Sentio policy, an :class:`ExportMetadata` record built by :func:`build_metadata`: the one function
that ``sentio train``, the training stage and the registration stage all use, so an export from
any of them can be re-scored and served the same way. The format carries its version: the
loader reads ``sentio-policy/3`` and refuses the earlier formats (``/1``, ``/2``) with what to do.

:class:`LoadedPolicy` rebuilds the network with :func:`sentio_core.policies.rebuild_policy` and acts
deterministically: the most probable action with masked-out actions at probability 0, computed
as sb3's own distributions compute it, so it equals ``predict(..., deterministic=True)`` (with
``action_masks`` for MaskablePPO); a PPO policy given a mask is masked the same way. One
observation of sb3's MLP policy (a live decision) takes a fast path to the same action: the
actor's layers called directly, then :func:`clear_argmax` on the raw logits, with sb3's
computation for the close calls.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from pydantic import ValidationError
from stable_baselines3.common.base_class import BaseAlgorithm

from sentio_core.files import DataError, exclusive, json_text, read_bytes, read_json, write_together
from sentio_core.metadata import FORMAT, HEADER_KEYS, PREVIOUS_FORMATS, ExportMetadata
from sentio_core.policies import POLICIES, model_of, reads_masks, rebuild_policy

WEIGHTS_SUFFIX = ".pth"
METADATA_SUFFIX = "-metadata.json"


def weights_bytes(obj: dict[str, Any]) -> bytes:
    """A ``torch.save`` payload as bytes (keep it to tensors and plain types for :func:`read_weights`)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def read_weights(path: str | Path, data: bytes | None = None) -> Any:
    """Load a ``torch.save`` file on the CPU with ``weights_only=True`` (no arbitrary unpickling).

    :param data: the file's bytes when already read (and checked against a content hash).
    :raises DataError: rule ``exists`` (no such file), ``non-empty`` (0 bytes), ``weights only``
        (it holds a Python object other than tensors and plain types) or ``readable`` (truncated,
        corrupt or not a ``torch.save`` file).
    """
    data = read_bytes(path) if data is None else data
    try:
        return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ... for bad files
        unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if unsafe:
            raise DataError(path, "weights only", f"holds {unsafe.group(1)}, not only tensors and plain types; "
                            "refusing to unpickle it") from None
        raise DataError(path, "readable", f"truncated, corrupt or not a torch.save file ({type(exc).__name__})") from None


def export_paths(stem: str | Path) -> tuple[Path, Path]:
    """``(STEM.pth, STEM-metadata.json)``; suffixes are appended, so dots in the stem are kept."""
    return Path(f"{stem}{WEIGHTS_SUFFIX}"), Path(f"{stem}{METADATA_SUFFIX}")


def _stem_of(path: str | Path) -> str:
    """The stem of ``STEM``, ``STEM.pth`` or ``STEM-metadata.json``."""
    text = str(path)
    for suffix in (WEIGHTS_SUFFIX, METADATA_SUFFIX):
        if text.endswith(suffix):
            return text[: -len(suffix)]
    return text


def policy_header(model: BaseAlgorithm, algorithm: str) -> dict[str, Any]:
    """Format, algorithm and network shape of ``model``: what :func:`rebuild_policy` needs.

    :raises ValueError: the model is not a 1-D Box / Discrete policy of ``algorithm`` built by
        :func:`sentio_core.policies.build_model` (same MLP for actor and critic, tanh).
    """
    if algorithm not in POLICIES:
        raise ValueError(f"unknown algorithm {algorithm!r}; use one of {sorted(POLICIES)}")
    policy = model.policy
    if not isinstance(policy, POLICIES[algorithm]):
        raise ValueError(f"model.policy is a {type(policy).__name__}, not the {POLICIES[algorithm].__name__} of {algorithm!r}")
    obs_space, act_space = model.observation_space, model.action_space
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
        raise ValueError(f"only a 1-D Box observation space can be exported, not {obs_space}")
    if not isinstance(act_space, gym.spaces.Discrete):
        raise ValueError(f"only a Discrete action space can be exported, not {act_space}")
    arch = policy.net_arch
    pi, vf = (arch.get("pi", []), arch.get("vf", [])) if isinstance(arch, dict) else (arch, arch)
    if list(pi) != list(vf) or policy.activation_fn is not torch.nn.Tanh:
        raise ValueError(f"the network (net_arch={arch}, activation={policy.activation_fn.__name__}) is not "
                         "the shape build_model makes (same MLP for pi and vf, Tanh)")
    spec = model_of(policy)
    return {"format": FORMAT, "algorithm": algorithm, "obs_dim": int(obs_space.shape[0]),
            "n_actions": int(act_space.n), "net_arch": [int(n) for n in pi],
            "model": None if spec is None else spec.to_dict()}


def save_policy(model: BaseAlgorithm, algorithm: str, stem: str | Path,
                metadata: dict[str, Any] | ExportMetadata) -> tuple[Path, Path]:
    """Write ``STEM.pth`` and ``STEM-metadata.json`` atomically (parent folders created).

    :param model: a trained ``MaskablePPO`` or ``PPO`` from :func:`sentio_core.policies.build_model`.
    :param algorithm: ``"maskable_ppo"`` or ``"ppo"``.
    :param stem: path without suffix; ``out/model.v1`` gives ``out/model.v1.pth``.
    :param metadata: JSON-serialisable; the header fields are added (a conflicting value raises)
        and ``created_at`` when missing.
    :returns: the paths of the weights and of the metadata.
    """
    header = policy_header(model, algorithm)
    state = {name: tensor.detach().to("cpu").clone() for name, tensor in model.policy.state_dict().items()}
    return _write_export(header, state, metadata, stem)


def publish(pth: str | Path, metadata: dict[str, Any] | ExportMetadata, stem: str | Path) -> tuple[Path, Path]:
    """Copy an exported policy to ``STEM.pth`` with new metadata in ``STEM-metadata.json``.

    The weights are read back with ``weights_only`` and their header checked before anything is
    written; the metadata gets the header fields (a conflicting value raises) and ``created_at``.
    :param pth: a ``.pth`` written by :func:`save_policy` (or its stem).
    :returns: the paths of the published weights and metadata.
    """
    source = export_paths(_stem_of(pth))[0]
    payload = read_weights(source)
    return _write_export(_check_header(payload, source), payload["state_dict"], metadata, stem)


@contextmanager
def replacing_export(stem: str | Path) -> Iterator[None]:
    """All or nothing, one writer at a time: hold the export folder for the block, and when the
    block raises put the previous ``STEM.pth`` / ``STEM-metadata.json`` pair back (or remove a pair
    that did not exist before)."""
    stem = Path(stem)
    with exclusive(stem.parent):
        previous = {p: p.read_bytes() for p in export_paths(stem) if p.is_file()}
        try:
            yield
        except BaseException:
            if previous:
                write_together(previous)
            else:
                for p in export_paths(stem):
                    p.unlink(missing_ok=True)
            raise


def _write_export(header: dict[str, Any], state: dict[str, torch.Tensor], metadata: dict[str, Any] | ExportMetadata,
                  stem: str | Path) -> tuple[Path, Path]:
    if isinstance(metadata, ExportMetadata):
        metadata = metadata.model_dump(mode="json", exclude_none=True)
    conflicts = sorted(k for k in HEADER_KEYS if k in metadata and metadata[k] != header[k])
    if conflicts:
        raise ValueError(f"metadata {conflicts} disagree with the model: {[(metadata[k], header[k]) for k in conflicts]}")
    created = {"created_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    pth, meta = export_paths(stem)
    weights = weights_bytes(header | {"state_dict": state})
    content = {"weights_sha256": hashlib.sha256(weights).hexdigest()}  # the pair's one content hash
    # both files are written in full before either replaces an existing export (a full disk
    # leaves the old pair intact); a crash between the two renames leaves a pair whose hash does
    # not match, which load_policy refuses
    text = json_text(created | dict(metadata) | header | content)  # non-JSON metadata fails before anything is written
    write_together({meta: text.encode(), pth: weights})
    return pth, meta


class LoadedPolicy:
    """An exported policy on the CPU, in eval mode; acts deterministically.

    :param state_dict: the policy's tensors, loaded strictly into a :func:`rebuild_policy` network.
    """

    def __init__(self, algorithm: str, obs_dim: int, n_actions: int, net_arch: list[int],
                 state_dict: dict[str, torch.Tensor], metadata: dict[str, Any] | None = None,
                 model: dict[str, Any] | None = None):
        self.algorithm, self.obs_dim, self.n_actions = algorithm, obs_dim, n_actions
        self.net_arch = list(net_arch)
        self.model = model
        self.metadata = dict(metadata or {})
        self._policy = rebuild_policy(algorithm, obs_dim, n_actions, self.net_arch, model)  # type: ignore[arg-type]
        self._policy.load_state_dict(state_dict, strict=True)
        self._policy.eval()
        self._mlp = _mlp_layers(self._policy)

    def __repr__(self) -> str:
        return f"LoadedPolicy({self.algorithm}, obs_dim={self.obs_dim}, n_actions={self.n_actions}, net_arch={self.net_arch})"

    def act(self, obs: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """Deterministic actions: the most probable allowed action (ties go to the lowest index).

        :param obs: ``(obs_dim,)`` or ``(N, obs_dim)`` floats.
        :param mask: booleans ``(n_actions,)`` or ``(N, n_actions)``, True = allowed; None = all allowed.
        :returns: int64 actions, shape ``()`` for one observation, ``(N,)`` for a batch.
        """
        if self._mlp is not None and np.ndim(obs) == 1:  # one decision: the fast path, the same action
            return self._act_one(obs, mask)
        probs, lead = self._probabilities(obs, mask)
        return probs.argmax(dim=-1).numpy().astype(np.int64).reshape(lead)

    def _act_one(self, obs: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        """:meth:`act` on one observation of an MLP policy, in a tenth of the time: the actor's
        layers called directly (:func:`_mlp_layers`: the same kernels on the same tensors, so the
        same logits to the bit), then the masked argmax of the raw logits (:func:`clear_argmax`).
        Where another allowed logit is close enough to the top for sb3's normalisations to round
        them equal, the probabilities are computed as sb3 computes them (:meth:`_masked_probs`)."""
        x = self._checked(obs)
        allowed = None if mask is None else self._check_mask(mask, ())
        h = torch.from_numpy(x[None])
        for weight, bias, activation in self._mlp:
            h = torch.nn.functional.linear(h, weight, bias)
            if activation is not None:
                h = activation(h)
        action = clear_argmax(h.numpy()[0], allowed)
        if action is None:
            with torch.no_grad():
                probs = self._masked_probs(h, None if allowed is None else torch.as_tensor(allowed[None]))
            action = int(probs.argmax(dim=-1)[0])
        return np.int64(action).reshape(())

    def action_probabilities(self, obs: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """Action probabilities, masked-out actions at 0; shape ``(n_actions,)`` or ``(N, n_actions)``."""
        probs, lead = self._probabilities(obs, mask)
        return probs.numpy().reshape(lead + (self.n_actions,))

    def _probabilities(self, obs: np.ndarray, mask: np.ndarray | None) -> tuple[torch.Tensor, tuple[int, ...]]:
        """Probabilities ``(N, n_actions)`` and the leading shape of ``obs``.

        Masked-out logits become -1e8 (probability exactly 0), as sb3's distributions compute them
        (:meth:`_masked_probs`), so the argmax, ties included, is bit for bit what
        ``predict(..., deterministic=True)`` returns.
        """
        x = self._checked(obs)
        lead = x.shape[:-1]
        allowed = None if mask is None else self._check_mask(mask, lead).reshape(-1, self.n_actions)
        batch = torch.as_tensor(x.reshape(-1, self.obs_dim))
        with torch.no_grad():
            return self._masked_probs(self._logits(batch), None if allowed is None else torch.as_tensor(allowed)), lead

    def _logits(self, batch: torch.Tensor) -> torch.Tensor:
        """The actor's raw logits: the modules sb3's ``get_distribution`` runs, without building
        its distribution objects (their argument checks cost more than the network here)."""
        p = self._policy
        return p.action_net(p.mlp_extractor.forward_actor(p.extract_features(batch, p.pi_features_extractor)))

    def _masked_probs(self, logits: torch.Tensor, allowed: torch.Tensor | None) -> torch.Tensor:
        """The probabilities sb3's distributions give, operation for operation. ``Categorical``
        normalises its logits (``x - logsumexp(x)``) and its probabilities are their softmax;
        ``MaskableCategorical`` normalises, then sets forbidden normalised logits to -1e8 (or, with
        no mask, keeps them) and normalises again; an unmasked policy given a mask is masked the
        same way (:meth:`act`'s override of ``predict``)."""
        def normalised(x: torch.Tensor) -> torch.Tensor:
            return x - x.logsumexp(dim=-1, keepdim=True)

        logits = normalised(logits)
        if allowed is not None:
            logits = normalised(torch.where(allowed, logits, torch.tensor(-1e8, dtype=logits.dtype)))
        elif reads_masks(self.algorithm):
            logits = normalised(logits)
        return torch.softmax(logits, dim=-1)

    def _checked(self, obs: np.ndarray) -> np.ndarray:
        """``obs`` as a float32 copy (torch refuses read-only arrays; pandas 3 hands those out).

        :raises ValueError: a shape other than ``(obs_dim,)`` or ``(N, obs_dim)``, or NaN or infinite values.
        """
        x = np.array(obs, dtype=np.float32)
        if x.ndim not in (1, 2) or x.shape[-1] != self.obs_dim:
            raise ValueError(f"obs has shape {x.shape}; expected ({self.obs_dim},) or (N, {self.obs_dim})")
        if not np.isfinite(x).all():
            raise ValueError("obs contains NaN or infinite values")
        return x

    def _check_mask(self, mask: np.ndarray, lead: tuple[int, ...]) -> np.ndarray:
        if not lead and isinstance(mask, np.ndarray) and mask.dtype == np.bool_ and mask.shape == (self.n_actions,) and mask.any():
            return mask  # one valid row (a decision's): no checks to pay for
        m = np.array(mask)
        expected = lead + (self.n_actions,)
        if m.shape != expected:
            raise ValueError(f"mask has shape {m.shape}; expected {expected} (one row of {self.n_actions} booleans per observation)")
        if m.dtype != np.bool_:
            if not np.isin(m, (0, 1)).all():
                raise ValueError("mask must hold booleans (or 0/1)")
            m = m.astype(bool)
        empty = np.flatnonzero(~m.reshape(-1, self.n_actions).any(axis=1))
        if empty.size:
            raise ValueError(f"mask row {int(empty[0])} allows no action; at least one must be True")
        return m


ACTIVATIONS = {torch.nn.Tanh: torch.tanh, torch.nn.ReLU: torch.relu}


def _mlp_layers(policy: torch.nn.Module) -> list[tuple[torch.Tensor, torch.Tensor, Any]] | None:
    """The actor of sb3's MLP policy (a flatten extractor, ``Linear`` and activation layers, the
    action layer) as ``(weight, bias, activation or None)`` per layer, the tensors detached (shared,
    not copied: no autograd graph is built); None for any other network (the Sentio models)."""
    from stable_baselines3.common.torch_layers import FlattenExtractor

    extractor = getattr(policy, "pi_features_extractor", None)
    actor = getattr(getattr(policy, "mlp_extractor", None), "policy_net", None)
    if type(extractor) is not FlattenExtractor or not isinstance(actor, torch.nn.Sequential):
        return None
    layers: list[tuple[torch.Tensor, torch.Tensor, Any]] = []
    for module in [*actor, policy.action_net]:
        if type(module) is torch.nn.Linear and module.bias is not None:
            layers.append((module.weight.detach(), module.bias.detach(), None))
        elif type(module) in ACTIVATIONS and layers and layers[-1][2] is None:
            layers[-1] = (*layers[-1][:2], ACTIVATIONS[type(module)])
        else:
            return None
    return layers


def clear_argmax(logits: np.ndarray, allowed: np.ndarray | None) -> int | None:
    """The allowed action with the largest raw logit, when no other allowed logit is within
    ``1e-4 (1 + max |logit|)`` of it; else None.

    sb3 takes the argmax of probabilities computed from the logits through monotone steps (the
    logits less their logsumexp, forbidden ones set to -1e8, normalised again, softmax). Rounding
    in a monotone step can make two values equal but never swap them, so a top logit this far
    (thousands of rounding errors) above every other allowed one stays the unique top: the same
    action. Closer calls, non-finite logits and an allowed top below -1e6 (against the -1e8 of the
    forbidden) are left to the exact computation.
    """
    values = logits.tolist()  # a handful of actions: Python floats beat numpy calls here
    if not math.isfinite(sum(values)):  # a NaN or an infinity among them (or a sum past the float range: exact path too)
        return None
    free = values if allowed is None else [v if ok else -math.inf for v, ok in zip(values, allowed.tolist())]
    best = max(free)
    reach = best - 1e-4 * (1.0 + max(abs(v) for v in values))
    if best < -1e6 or sum(v >= reach for v in free) > 1:
        return None
    return free.index(best)


def read_metadata(policy: LoadedPolicy, source: str | Path = "metadata") -> ExportMetadata:
    """The typed metadata of a loaded export; :class:`DataError` when it is not a full Sentio export."""
    try:
        return ExportMetadata.model_validate(policy.metadata)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise DataError(source, "export metadata", f"{where}: {first['msg']} ({exc.error_count()} problems); "
                        "write it with sentio_core.metadata.build_metadata") from None


def load_policy(path: str | Path, metadata_path: str | Path | None = None, require_metadata: bool = True) -> LoadedPolicy:
    """Load ``STEM.pth`` (given as ``STEM`` or ``STEM.pth``) and its ``STEM-metadata.json``.

    :param metadata_path: where the metadata is, when not beside the weights under the usual name.
    :param require_metadata: False loads weights without metadata (``.metadata`` is then ``{}``).
    :raises DataError: naming the file: missing, not loadable with ``weights_only``, not this
        format, weights that do not fit the network, or metadata that disagrees with the weights.
    """
    pth, meta = export_paths(_stem_of(path))
    meta = Path(metadata_path) if metadata_path is not None else meta
    data = read_bytes(pth)
    read = require_metadata or meta.is_file()
    metadata = _read_metadata(meta) if read else {}
    if read:
        _check_content(pth, meta, data, metadata)
    payload = read_weights(pth, data)
    header = _check_header(payload, pth)
    wrong = {k: (metadata[k], header[k]) for k in HEADER_KEYS if k in metadata and metadata[k] != header[k]}
    if wrong:
        raise DataError(meta, "matches weights", f"(metadata, weights) differ for {wrong}; the files are from different exports")
    try:
        return LoadedPolicy(header["algorithm"], header["obs_dim"], header["n_actions"], header["net_arch"],
                            payload["state_dict"], metadata, header["model"])
    except (RuntimeError, ValueError, TypeError) as exc:  # a model spec that builds no network; missing,
        # unexpected or mis-shaped tensors (load_state_dict)
        raise DataError(pth, "fits network", str(exc).replace("\n", " ")[:500]) from None


def _check_header(payload: Any, pth: Path) -> dict[str, Any]:
    found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
    _refuse_previous_format(found, pth)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise DataError(pth, "format", f"not a {FORMAT} export (found {found!r}); write it with sentio_core.export.save_policy")
    header = {k: payload.get(k) for k in HEADER_KEYS}
    shape_ok = all(isinstance(header[k], int) and header[k] > 0 for k in ("obs_dim", "n_actions"))
    arch_ok = isinstance(header["net_arch"], list) and all(isinstance(n, int) and n > 0 for n in header["net_arch"])
    model_ok = header["model"] is None or isinstance(header["model"], dict)
    if (header["algorithm"] not in POLICIES or not shape_ok or not arch_ok or not model_ok
            or not isinstance(payload.get("state_dict"), dict)):
        raise DataError(pth, "format", f"bad header {header} or no state_dict")
    return header


def _refuse_previous_format(found: Any, where: Path) -> None:
    """An export of an earlier format is refused with what to do, not guessed at."""
    if isinstance(found, str) and found in PREVIOUS_FORMATS:
        raise DataError(where, "format", f"a {found} export, {PREVIOUS_FORMATS[found]}; this Sentio reads {FORMAT}: "
                        "re-export it with `sentio train` or `sentio run --refresh`")


def _check_content(pth: Path, meta: Path, data: bytes, metadata: dict[str, Any]) -> None:
    """The weights' SHA-256 must be the metadata's ``weights_sha256``, checked before torch reads them."""
    _refuse_previous_format(metadata.get("format"), meta)
    expected = metadata.get("weights_sha256")
    if not isinstance(expected, str):
        raise DataError(meta, "content hash", "no weights_sha256; write the export with sentio_core.export.save_policy")
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise DataError(pth, "content hash", f"SHA-256 {actual[:16]}... is not the metadata's weights_sha256 "
                        f"{expected[:16]}... ({meta.name}): the weights were changed, or the files are from different exports")


def _read_metadata(meta: Path) -> dict[str, Any]:
    if not meta.is_file():
        raise DataError(meta, "exists", "no such file; save_policy writes it beside the .pth (or pass require_metadata=False)")
    try:
        metadata = read_json(meta)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(meta, "readable", f"not valid JSON ({exc})") from None
    if not isinstance(metadata, dict):
        raise DataError(meta, "format", f"expected a JSON object, found {type(metadata).__name__}")
    return metadata
