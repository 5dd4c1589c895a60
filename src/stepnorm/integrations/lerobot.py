"""LeRobot: per-chunk-position action statistics in LeRobot's processor pipelines and policies.

LeRobot's ``NormalizerProcessorStep`` / ``UnnormalizerProcessorStep`` broadcast ``stats.json``
arrays. ``[H, D]`` per-timestep statistics work on ``[B, H, D]`` training chunks, but at inference a
policy's ``select_action`` pops one action ``[B, D]`` from a queue filled with the raw model chunk,
and the postprocessor then has no way to know which chunk position that action came from. So:

- ``StepnormActionNormalizerStep`` (registry name ``stepnorm_action_normalizer``), in the
  preprocessor *before* LeRobot's normalizer (it needs the raw ``observation.state`` for a
  ``delta_mask``): normalizes ``[B, h, D]`` action chunks with the statistics of positions ``0..h-1``,
  after making the ``delta_mask`` dims relative to the state (the artifact's action space).
- ``StepnormActionUnnormalizerStep`` (``stepnorm_action_unnormalizer``), in the postprocessor in
  place of LeRobot's unnormalizer, holds the same statistics. ``attach(policy, postprocessor)`` wraps
  the policy's ``predict_action_chunk`` so the predicted chunk is unnormalized per position (and the
  state added back on the ``delta_mask`` dims) *before* ``select_action`` queues it: every executed
  action, for any ``n_action_steps`` and batch size (and ACT's temporal ensembling), gets its own
  position's statistics. Without ``attach`` the postprocessor step refuses to run.
- ``processors(preprocessor, postprocessor, artifact)`` rewrites LeRobot's default pipelines that
  way: it takes the action out of LeRobot's own (un)normalizer steps and inserts the two steps above,
  with the mode of the policy's ``normalization_mapping`` for actions.

Both steps save their statistics as processor state (``state_dict`` / ``load_state_dict``, safetensors
in LeRobot's ``save_pretrained``) and their settings as config, so ``from_pretrained`` rebuilds them
without the artifact once ``register()`` has run (importing this module after LeRobot runs it).

Nothing here imports LeRobot at module level: the steps are plain classes following LeRobot's
processor-step protocol; ``register()`` makes them virtual subclasses of LeRobot's ``ProcessorStep``
(its pipelines check ``isinstance``) and adds their names to ``ProcessorStepRegistry``.

Chunk position ``k`` is ``a_{t+k}`` (SPEC section 2): this fits policies whose training action chunk
starts at the current frame (``action_delta_indices`` from 0: ACT, pi0, SmolVLA, ...), which
``attach`` checks.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import sys
from typing import Any, Mapping, Sequence

import torch

from stepnorm.artifact import Artifact, read_artifact
from stepnorm.normalize import Normalizer
from stepnorm.torch_norm import Normalize, Unnormalize

ACTION = "action"
STATE_KEY = "observation.state"
# The raw state the delta_mask dims are relative to, carried from the preprocessor to the policy's
# predict_action_chunk in the observation batch (LeRobot keeps every ``observation.*`` key).
REFERENCE_KEY = "observation.stepnorm_delta_reference"
NORMALIZER_NAME = "stepnorm_action_normalizer"
UNNORMALIZER_NAME = "stepnorm_action_unnormalizer"
# LeRobot's NormalizationMode values -> stepnorm modes (QUANTILE10 and IDENTITY have no equivalent).
LEROBOT_MODES = {"MEAN_STD": "mean_std", "MIN_MAX": "min_max", "QUANTILES": "q01_q99"}
_LEROBOT_NORMALIZER = "normalizer_processor"
_LEROBOT_UNNORMALIZER = "unnormalizer_processor"
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


class _ActionChunkStats:
    """Per-timestep action statistics as a torch module, from an artifact or from saved state.

    Args:
        artifact: a stepnorm artifact directory (or ``Artifact``). Given, it wins over saved state
            (as LeRobot's explicit ``stats`` do), so ``from_pretrained(..., overrides={name:
            {"artifact": dir}})`` swaps statistics. Omitted, ``load_state_dict`` supplies them.
        mode, mask, clip: as for ``stepnorm.normalize.Normalizer``; ``mask`` and ``clip`` default to
            the artifact config's ``normalization.action`` (what ``stepnorm normalize`` applies).
        dataset: one dataset's statistics instead of the combined ones.
        state_key: the observation holding the state the artifact's ``delta_mask`` is relative to.
        dtype: ``float64`` (default: exact against stepnorm's numpy ``Normalizer``) or ``float32``
            (devices without float64, e.g. MPS). Outputs keep the input's dtype either way.
        fingerprint: the artifact's fingerprint, recorded in the saved config.
    """

    _module_class: type = Normalize

    def __init__(self, artifact: str | os.PathLike | Artifact | None = None, mode: str = "mean_std",
                 mask: Sequence[bool] | None = None, clip: bool | None = None, dataset: str | None = None,
                 state_key: str = STATE_KEY, dtype: str = "float64", fingerprint: str | None = None):
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        self.mode = mode
        self.mask = None if mask is None else [bool(m) for m in mask]
        self.clip = clip
        self.dataset = dataset
        self.state_key = state_key
        self.dtype = dtype
        self.fingerprint = fingerprint
        self.module: Normalize | Unnormalize | None = None
        self.delta_mask: torch.Tensor | None = None
        self._artifact_given = artifact is not None
        if artifact is not None:
            self._set_artifact(artifact if isinstance(artifact, Artifact) else read_artifact(artifact))

    def _set_artifact(self, art: Artifact) -> None:
        spec = (art.doc.get("config", {}).get("normalization") or {}).get(ACTION) or {}
        if self.mask is None and spec.get("mask") is not None:
            self.mask = [bool(m) for m in spec["mask"]]
        if self.clip is None and spec.get("clip") is not None:
            self.clip = bool(spec["clip"])
        # The artifact's per-timestep decision picks the statistics, as for every other path: [H, D]
        # rows when it is on, else its one [D] block (pooled with a delta_mask, or global).
        normalizer = Normalizer.from_artifact(art, ACTION, self.dataset, mode=self.mode, mask=self.mask,
                                              clip=self.clip)
        self.module = self._module_class.from_normalizer(normalizer, dtype=_DTYPES[self.dtype])
        delta = art.doc.get("config", {}).get("delta_mask")
        self.delta_mask = torch.tensor([bool(d) for d in delta]) if delta and any(delta) else None
        if self.delta_mask is not None and self.delta_mask.shape[0] != self.module.dim:
            raise ValueError(f"the artifact's delta_mask has {self.delta_mask.shape[0]} entries for "
                             f"{self.module.dim} action dims")
        self.fingerprint = art.fingerprint

    @property
    def _work_dtype(self) -> torch.dtype:
        """What the delta and the affine map compute in (the statistics' dtype)."""
        return self._ready().global_center.dtype

    def _ready(self) -> Normalize | Unnormalize:
        if self.module is None:
            raise RuntimeError(f"{type(self).__name__} has no statistics: pass artifact= or load its state")
        return self.module

    def _on(self, device: torch.device) -> Normalize | Unnormalize:
        module = self._ready()
        if module.global_center.device != device:
            module.to(device)
        return module

    def _reference(self, state: torch.Tensor, batch_shape: tuple[int, ...]) -> torch.Tensor:
        """``[*batch, D]`` in the working dtype: the state on the ``delta_mask`` dims, 0 elsewhere."""
        mask = self.delta_mask.to(state.device)
        on = torch.nonzero(mask).flatten()
        if tuple(state.shape[:-1]) != batch_shape or state.shape[-1] <= int(on.max()):
            raise ValueError(f"{self.state_key} has shape {list(state.shape)}; the delta_mask needs one state of "
                             f"at least {int(on.max()) + 1} dims per chunk, batch shape {list(batch_shape)}")
        ref = torch.zeros(*batch_shape, mask.shape[0], dtype=self._work_dtype, device=state.device)
        ref[..., on] = state[..., on].to(self._work_dtype)
        return ref

    def get_config(self) -> dict[str, Any]:
        """The settings, JSON-serializable; the statistics travel in ``state_dict``."""
        return {"mode": self.mode, "mask": self.mask, "clip": self.clip, "dataset": self.dataset,
                "state_key": self.state_key, "dtype": self.dtype, "fingerprint": self.fingerprint}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The module's buffers (affine parameters, masks, clip bound) and the ``delta_mask``."""
        state = {k: v.detach().cpu() for k, v in self._ready().state_dict().items()}
        if self.delta_mask is not None:
            state["delta_mask"] = self.delta_mask.clone()
        return state

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore saved statistics, unless an artifact was given (then that one is kept)."""
        if self._artifact_given:
            return
        buffers = {k: v for k, v in state.items() if k != "delta_mask"}
        self.module = self._module_class.from_state_dict(buffers)
        self.delta_mask = state["delta_mask"].to(torch.bool).cpu() if "delta_mask" in state else None

    def reset(self) -> None:
        """Nothing to reset: the steps keep no per-episode state."""

    def transform_features(self, features):
        """Shapes and feature types are unchanged."""
        return features


class StepnormActionNormalizerStep(_ActionChunkStats):
    """Preprocessor step: ``[B, h, D]`` action chunks -> normalized with positions ``0..h-1``.

    With a ``delta_mask`` it first subtracts the chunk's state (``state_key``, ``[B, Ds]``, raw: put
    this step before LeRobot's normalizer) on the masked dims, and it always records that state
    under ``REFERENCE_KEY`` so the attached policy can add it back at inference.
    """

    _module_class = Normalize

    def __call__(self, transition: dict) -> dict:
        new = dict(transition)
        observation = new.get("observation")
        action = new.get(ACTION)
        if action is not None and (not isinstance(action, torch.Tensor) or action.dim() != 3):
            raise ValueError(f"{NORMALIZER_NAME} normalizes action chunks [B, h, D] per position; got "
                             f"{list(getattr(action, 'shape', [])) or type(action).__name__} (a policy "
                             "trained on single actions needs LeRobot's own normalizer)")
        reference = None
        if self.delta_mask is not None and observation is not None:
            if self.state_key not in observation:
                raise ValueError(f"the artifact has a delta_mask, but the observation has no {self.state_key!r}")
            state = torch.as_tensor(observation[self.state_key])
            batch_shape = tuple(action.shape[:-2]) if action is not None else tuple(state.shape[:-1])
            reference = self._reference(state, batch_shape)
            new["observation"] = {**observation, REFERENCE_KEY: reference}
        if action is None:
            return new
        if self.delta_mask is not None:
            if reference is None:
                raise ValueError(f"the artifact has a delta_mask: the transition needs {self.state_key!r}")
            x = action.to(self._work_dtype) - reference[:, None, :]
        else:
            x = action
        module = self._on(action.device)
        new[ACTION] = module(x, chunked=module.has_per_timestep).to(action.dtype)
        return new


class StepnormActionUnnormalizerStep(_ActionChunkStats):
    """Postprocessor step holding the statistics that ``attach`` applies inside the policy.

    The policy's chunks are unnormalized per position before they are queued (``unnormalize_chunk``),
    so the actions reaching this step are already in robot units and pass through. Before ``attach``
    it raises: a single ``[B, D]`` action has lost its chunk position.
    """

    _module_class = Unnormalize

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.attached = False

    def unnormalize_chunk(self, chunk: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, h, D]`` normalized chunk -> robot units, position ``k`` with statistics ``k``.

        ``reference`` (``[B, D]``, from ``REFERENCE_KEY``) is added back on the ``delta_mask`` dims.
        """
        if chunk.dim() != 3:
            raise ValueError(f"expected a predicted chunk [B, h, D], got shape {list(chunk.shape)}")
        module = self._on(chunk.device)
        x = module(chunk.to(self._work_dtype), chunked=module.has_per_timestep)
        if self.delta_mask is not None:
            if reference is None:
                raise ValueError(f"the artifact has a delta_mask, but the batch has no {REFERENCE_KEY!r}: "
                                 f"the preprocessor needs {NORMALIZER_NAME} (stepnorm.integrations.lerobot.processors)")
            x = x + reference.to(device=x.device, dtype=x.dtype)[:, None, :]
        return x.to(chunk.dtype)

    def __call__(self, transition: dict) -> dict:
        if not self.attached:
            raise RuntimeError(f"{UNNORMALIZER_NAME}: per-timestep actions must be unnormalized before the policy "
                               "queues them; call stepnorm.integrations.lerobot.attach(policy, postprocessor) first")
        return transition


def register() -> None:
    """Make both steps LeRobot ``ProcessorStep``s and register their names (idempotent; imports LeRobot)."""
    from lerobot.processor.pipeline import ProcessorStep, ProcessorStepRegistry

    for name, cls in ((NORMALIZER_NAME, StepnormActionNormalizerStep),
                      (UNNORMALIZER_NAME, StepnormActionUnnormalizerStep)):
        ProcessorStep.register(cls)
        try:
            existing = ProcessorStepRegistry.get(name)
        except KeyError:
            existing = None
        if existing is None:
            ProcessorStepRegistry.register(name)(cls)
        elif existing is not cls:
            raise RuntimeError(f"LeRobot processor step name {name!r} is already taken by {existing!r}")


def _registry_name(step) -> str | None:
    return getattr(type(step), "_registry_name", None)


def _action_mode(step) -> str:
    """The stepnorm mode for LeRobot's normalization mode of ACTION features in ``step.norm_map``."""
    for feature_type, norm_mode in step.norm_map.items():
        if getattr(feature_type, "value", feature_type) == "ACTION":
            value = getattr(norm_mode, "value", norm_mode)
            if value not in LEROBOT_MODES:
                raise ValueError(f"LeRobot normalization mode {value} for actions has no stepnorm equivalent "
                                 f"(use one of {sorted(LEROBOT_MODES)})")
            return LEROBOT_MODES[value]
    raise ValueError("the policy's normalization_mapping has no mode for ACTION features")


def _without_action(step):
    """LeRobot's (un)normalizer step with the action taken out, or None if nothing else is left."""
    features = {k: v for k, v in step.features.items() if k != ACTION}
    if not features:
        return None
    return dataclasses.replace(step, features=features, stats={k: v for k, v in (step.stats or {}).items() if k != ACTION})


def processors(preprocessor, postprocessor, artifact: str | os.PathLike | Artifact, *, mode: str | None = None,
               mask: Sequence[bool] | None = None, clip: bool | None = None, dataset: str | None = None,
               state_key: str = STATE_KEY, dtype: str = "float64"):
    """LeRobot's policy pre/postprocessor with per-timestep action statistics from ``artifact``.

    In the preprocessor, ``StepnormActionNormalizerStep`` goes right before LeRobot's
    ``NormalizerProcessorStep``, which keeps normalizing the observations only. In the postprocessor,
    ``StepnormActionUnnormalizerStep`` takes the place of ``UnnormalizerProcessorStep`` (kept, without
    the action, if it unnormalizes anything else). ``mode`` defaults to the one LeRobot's normalizer
    uses for actions (the policy config's ``normalization_mapping``). Returns new pipelines; at
    inference also call ``attach(policy, postprocessor)``.
    """
    if importlib.util.find_spec("lerobot") is not None:  # pipelines of LeRobot's own classes
        register()
    art = artifact if isinstance(artifact, Artifact) else read_artifact(artifact)
    pre_steps = list(preprocessor.steps)
    at = [i for i, s in enumerate(pre_steps) if _registry_name(s) == _LEROBOT_NORMALIZER]
    if len(at) != 1:
        raise ValueError(f"expected one LeRobot {_LEROBOT_NORMALIZER} step in the preprocessor, found {len(at)}")
    lerobot_norm = pre_steps[at[0]]
    mode = mode or _action_mode(lerobot_norm)
    settings = dict(mode=mode, mask=mask, clip=clip, dataset=dataset, state_key=state_key, dtype=dtype)
    kept = _without_action(lerobot_norm)
    pre_steps[at[0]:at[0] + 1] = [StepnormActionNormalizerStep(art, **settings)] + ([kept] if kept else [])

    post_steps = list(postprocessor.steps)
    at = [i for i, s in enumerate(post_steps) if _registry_name(s) == _LEROBOT_UNNORMALIZER]
    if len(at) != 1:
        raise ValueError(f"expected one LeRobot {_LEROBOT_UNNORMALIZER} step in the postprocessor, found {len(at)}")
    kept = _without_action(post_steps[at[0]])
    post_steps[at[0]:at[0] + 1] = ([kept] if kept else []) + [StepnormActionUnnormalizerStep(art, **settings)]
    return dataclasses.replace(preprocessor, steps=pre_steps), dataclasses.replace(postprocessor, steps=post_steps)


def attach(policy, postprocessor):
    """Unnormalize ``policy``'s predicted chunks per position before ``select_action`` queues them.

    Wraps the instance's ``predict_action_chunk`` (which ``select_action`` calls to refill its queue,
    and whose output ACT's temporal ensembler averages) with the postprocessor's
    ``StepnormActionUnnormalizerStep.unnormalize_chunk``, and lets that step pass the already
    unnormalized actions through. Returns ``policy``.
    """
    steps = [s for s in postprocessor.steps if isinstance(s, StepnormActionUnnormalizerStep)]
    if len(steps) != 1:
        raise ValueError(f"expected one {UNNORMALIZER_NAME} step in the postprocessor, found {len(steps)}")
    step = steps[0]
    if getattr(policy, "_stepnorm_unnormalizer", None) is not None:
        raise ValueError("this policy is already attached to a stepnorm postprocessor")
    indices = getattr(getattr(policy, "config", None), "action_delta_indices", None)
    if indices is not None and list(indices)[:1] != [0]:
        raise ValueError(f"the policy's action chunk starts at frame offset {list(indices)[:1]}, but stepnorm's "
                         "chunk position 0 is the current frame's action")
    predict = policy.predict_action_chunk

    def predict_action_chunk(batch, *args, **kwargs):
        return step.unnormalize_chunk(predict(batch, *args, **kwargs), batch.get(REFERENCE_KEY))

    policy.predict_action_chunk = predict_action_chunk
    policy._stepnorm_unnormalizer = step
    step.attached = True
    return policy


# LeRobot already imported (the usual order in a training script): register right away, so that
# ``from_pretrained`` finds the step names without an explicit register() call.
if "lerobot.processor.pipeline" in sys.modules:
    register()
