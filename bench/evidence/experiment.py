"""One run of the evidence experiment: demos -> stepnorm statistics -> MLP policy -> closed-loop success.

The library does the normalization work, as it would in a user's training code:

- the demos are ``stepnorm.sources.base.Episode`` objects (``action [T, 2]`` = the commands,
  ``state [T, 6]`` = the observation), fed to a ``ChunkStatsAccumulator`` whose ``delta_mask``
  marks both action dims as relative to state dims 0, 1 (the position) when the targets are delta
  actions ``a_{t+k} - s_t``;
- its ``FinalStats`` give the pooled statistics (every valid chunk entry of every position, what
  openpi's compute_norm_stats produces over its action chunks) and the per-timestep ``[H, D]``
  ones, plus the state statistics for the observation;
- ``stepnorm.torch_norm.Normalize`` maps the training targets to normalized units, and
  ``Unnormalize`` maps the policy's output back to commands at evaluation.

Conditions (``Condition.norm``): ``global`` (pooled statistics for every chunk position),
``per_timestep`` (position k's own statistics), ``reweight`` (global normalization with the loss
at position k and dim d weighted by ``(sigma_global[d] / sigma_k[d])^2``, which makes the loss
equal to the per-timestep one as a function of the raw prediction), each in ``mean_std`` or
``q01_q99`` mode (for q01_q99 the spread is ``(q99 - q01) / 2``; no clipping, so targets stay
invertible).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view

import pointmass as pm
from stepnorm.normalize import center_and_spread
from stepnorm.sources.base import Episode
from stepnorm.stats import AccumulatorSpec, ChunkStatsAccumulator
from stepnorm.torch_norm import Normalize, Unnormalize

NORMS = ("global", "per_timestep", "reweight")
QUANTILES = (0.01, 0.99)
EXECUTE = 8  # actions of each predicted chunk executed before re-planning
DATA_SEED = 1000  # with the run's seed, draws its demos (the same for every condition)
EVAL_SEED = 2000  # the evaluation tasks are the same for every run
N_EVAL = 200
N_VAL = 50


@dataclass(frozen=True)
class Condition:
    """Everything that defines one run (its name and JSON file follow from it)."""

    action: str = "delta"  # "delta" (a_{t+k} - s_t) or "absolute" (a_{t+k})
    horizon: int = 50
    norm: str = "global"  # one of NORMS
    mode: str = "mean_std"  # or "q01_q99"
    seed: int = 0
    steps: int = 4000
    batch: int = 256
    width: int = 256
    depth: int = 3
    demos: int = 500
    lr: float = 3e-3
    n_eval: int = N_EVAL

    @property
    def group(self) -> str:
        """The condition without the seed: runs of one group are pooled in the table."""
        d = asdict(self)
        d.pop("seed")
        return "-".join(f"{v}" for v in d.values())

    @property
    def key(self) -> str:
        """A short content hash: a result file is reused only for exactly this condition."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


def make_episodes(rng: np.random.Generator, n: int, name: str) -> list[Episode]:
    """``n`` expert demos on fresh tasks, as stepnorm episodes."""
    tasks = pm.sample_tasks(rng, n)
    states, actions = pm.expert_demos(rng, tasks)
    episodes = [Episode(dataset=name, source=f"{name} demo {i}", index=i, action=actions[i].astype(np.float32),
                        state=states[i].astype(np.float32)) for i in range(n)]
    return episodes


def chunk_targets(ep: Episode, horizon: int, delta: bool) -> tuple[np.ndarray, np.ndarray]:
    """SPEC section 2 chunks of one episode: ``targets [T, H, 2]`` and ``valid [T, H]`` (padding False)."""
    t_len = ep.length
    action = ep.action.astype(np.float64)
    padded = np.concatenate([action, np.full((horizon - 1, action.shape[1]), np.nan)])
    chunks = sliding_window_view(padded, horizon, axis=0).transpose(0, 2, 1)  # [T, H, D]: a_{t+k}
    if delta:
        chunks = chunks - ep.state[:, None, :2].astype(np.float64)
    valid = np.arange(horizon)[None, :] < (t_len - np.arange(t_len))[:, None]
    return np.where(valid[..., None], chunks, 0.0), valid


def statistics(episodes: list[Episode], horizon: int, delta: bool) -> dict:
    """The demos' statistics through stepnorm's accumulator: ``{"pooled", "per_timestep", "state"}`` STATS blocks."""
    spec = AccumulatorSpec(horizon, delta_mask=(True, True) if delta else None)
    acc = ChunkStatsAccumulator(spec, name="pointmass")
    for ep in episodes:
        acc.add_episode(ep.action, ep.state, ep.source)
    # The episodes again: exact quantiles take a second pass over cells with many distinct values.
    final = acc.finalize(episodes).to_dict(QUANTILES)
    return {"pooled": final["action"]["pooled"], "per_timestep": final["action"]["per_timestep"],
            "state": final["state"]["global"]}


def loss_weights(stats: dict, cond: Condition) -> np.ndarray:
    """Per ``[H, D]`` loss weight: ``(sigma_global / sigma_k)^2`` for reweight, else 1."""
    h = cond.horizon
    if cond.norm != "reweight":
        return np.ones((h, 2))
    _, spread_g = center_and_spread(stats["pooled"], cond.mode)
    _, spread_k = center_and_spread(stats["per_timestep"], cond.mode)
    return (spread_g[None, :] / spread_k) ** 2


def make_normalizers(stats: dict, cond: Condition) -> tuple[Normalize, Unnormalize, bool]:
    """Target normalizer, output unnormalizer (float64 buffers) and the ``chunked`` flag to call them with."""
    pt = stats["per_timestep"] if cond.norm == "per_timestep" else None
    kwargs = {"mode": cond.mode, "clip": False, "dtype": torch.float64}
    return (Normalize.from_stats(stats["pooled"], pt, **kwargs), Unnormalize.from_stats(stats["pooled"], pt, **kwargs),
            pt is not None)


class Policy(torch.nn.Module):
    """MLP ``observation [B, 6] -> normalized chunk [B, H, 2]``; the observation is normalized inside."""

    def __init__(self, state_stats: dict, horizon: int, width: int, depth: int):
        super().__init__()
        self.horizon = horizon
        self.obs_norm = Normalize.from_stats(state_stats, None, mode="mean_std", clip=False)
        layers, size = [], 6
        for _ in range(depth):
            layers += [torch.nn.Linear(size, width), torch.nn.ReLU()]
            size = width
        layers.append(torch.nn.Linear(size, horizon * 2))
        self.net = torch.nn.Sequential(*layers)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(self.obs_norm(obs, chunked=False)).view(-1, self.horizon, 2)


def dataset_arrays(episodes: list[Episode], cond: Condition) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All training samples: ``obs [N, 6]``, raw ``targets [N, H, 2]``, ``valid [N, H]``."""
    parts = [chunk_targets(ep, cond.horizon, cond.action == "delta") for ep in episodes]
    obs = np.concatenate([ep.state for ep in episodes]).astype(np.float64)
    return obs, np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def predict(policy: Policy, unnorm: Unnormalize, chunked: bool, obs: np.ndarray, delta: bool) -> np.ndarray:
    """Commands ``[N, H, 2]`` in raw units (absolute positions) for observations ``[N, 6]``."""
    with torch.no_grad():
        out = unnorm(policy(torch.as_tensor(obs, dtype=torch.float32)).double(), chunked=chunked).numpy()
    return out + obs[:, None, :2] if delta else out


def evaluate(policy: Policy, unnorm: Unnormalize, chunked: bool, cond: Condition) -> dict[str, np.ndarray]:
    """Closed loop on the fixed evaluation tasks: execute ``EXECUTE`` actions per chunk, re-plan."""
    tasks = pm.sample_tasks(np.random.default_rng(EVAL_SEED), cond.n_eval)
    pos = tasks["start"].copy()
    path = [pos]
    for t in range(pm.EPISODE_LEN):
        if t % EXECUTE == 0:
            plan = predict(policy, unnorm, chunked, pm.observation(pos, tasks), cond.action == "delta")
        pos = plan[:, t % EXECUTE]
        path.append(pos)
    return pm.outcome(np.stack(path, 1), tasks)


def chunk_error(policy, unnorm, chunked, episodes: list[Episode], cond: Condition) -> np.ndarray:
    """Mean Euclidean error (raw units) per chunk position on held-out demos, ``[H]``."""
    obs, targets, valid = dataset_arrays(episodes, cond)
    pred = predict(policy, unnorm, chunked, obs, cond.action == "delta")
    if cond.action == "delta":
        pred = pred - obs[:, None, :2]
    err = np.linalg.norm(pred - targets, axis=-1)
    return (err * valid).sum(0) / valid.sum(0)


def run(cond: Condition) -> dict:
    """Train and evaluate one condition; the result as a JSON-able dict."""
    t_start, cpu_start = time.perf_counter(), time.process_time()
    torch.manual_seed(cond.seed)
    # The seed draws the demos as well as the initialization and batches: the CIs cover both.
    train_eps = make_episodes(np.random.default_rng([DATA_SEED, cond.seed]), cond.demos, "train")
    val_eps = make_episodes(np.random.default_rng([DATA_SEED + 1, cond.seed]), N_VAL, "val")
    stats = statistics(train_eps, cond.horizon, cond.action == "delta")
    norm, unnorm, chunked = make_normalizers(stats, cond)
    obs, targets, valid = dataset_arrays(train_eps, cond)
    obs_t = torch.as_tensor(obs, dtype=torch.float32)
    y = norm(torch.as_tensor(targets), chunked=chunked).float()
    mask = torch.as_tensor(valid, dtype=torch.float32)[..., None] * torch.as_tensor(loss_weights(stats, cond)).float()
    valid_t = torch.as_tensor(valid, dtype=torch.float32)
    policy = Policy(stats["state"], cond.horizon, cond.width, cond.depth)
    opt = torch.optim.Adam(policy.parameters(), lr=cond.lr)
    # Cosine decay to 0: the last steps refine instead of jittering at the full learning rate.
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cond.steps)
    gen = torch.Generator().manual_seed(cond.seed)
    t0 = time.perf_counter()
    for _ in range(cond.steps):
        idx = torch.randint(0, len(obs_t), (cond.batch,), generator=gen)
        sq = (policy(obs_t[idx]) - y[idx]) ** 2 * mask[idx]
        loss = sq.sum() / (valid_t[idx].sum() * 2)  # mean over valid (position, dim) entries
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    train_s = time.perf_counter() - t0
    policy.eval()
    result = evaluate(policy, unnorm, chunked, cond)
    err = chunk_error(policy, unnorm, chunked, val_eps, cond)
    _, spread_k = center_and_spread(stats["per_timestep"], cond.mode)
    _, spread_g = center_and_spread(stats["pooled"], cond.mode)
    return {"condition": asdict(cond), "group": cond.group, "key": cond.key, "final_loss": float(loss.detach()),
            "train_seconds": train_s, "total_seconds": time.perf_counter() - t_start,
            # CPU time of this (single-threaded) run: its wall time on a free core, whatever the load.
            "cpu_seconds": time.process_time() - cpu_start,
            "success": {k: v.astype(int).tolist() for k, v in result.items() if k.startswith("success@")},
            "collided": result["collided"].astype(int).tolist(),
            "final_distance": result["final_distance"].tolist(), "chunk_error": err.tolist(),
            "spread_per_timestep": spread_k.tolist(), "spread_global": spread_g.tolist()}
