"""The toy task: a 2-D point mass commanded by position, a disc obstacle, a scripted expert.

Every function is vectorized over a batch of tasks (``[N, ...]`` arrays), so the expert demos
and the policy evaluation step all episodes at once.

- Dynamics: the command is the next position, ``s_{t+1} = a_t`` (a position-controlled robot).
- Task: a random start and goal in ``[-1, 1]^2`` at least ``MIN_GOAL_DIST`` apart, a disc of
  radius ``RADIUS`` near the midpoint, shifted sideways (perpendicular to start->goal) by
  ``SHIFT_RANGE`` to a random side, so the straight line always crosses it.
- Expert: smooth state feedback (``expert_step``) around the disc inflated by ``MARGIN``, plus
  Gaussian command noise ``NOISE_STD``. It depends only on (position, goal, obstacle centre),
  i.e. on what the policy observes.
- Success: final distance to the goal below a tolerance and no executed segment ever entering
  the (uninflated) disc.
"""

from __future__ import annotations

import numpy as np

EPISODE_LEN = 100
RADIUS = 0.25
MARGIN = 0.06
MIN_GOAL_DIST = 1.0
SHIFT_RANGE = (0.03, 0.15)
V_MAX = 0.05
GAIN = 0.15
NOISE_STD = 0.003
TOLERANCES = (0.01, 0.02, 0.05)
MAIN_TOLERANCE = 0.02


def sample_tasks(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """``n`` tasks: ``start, goal, obstacle [n, 2]`` and the side the expert passes on ``[n]``."""
    start = np.empty((n, 2))
    goal = np.empty((n, 2))
    filled = 0
    while filled < n:  # rejection sampling of start/goal pairs far enough apart
        s = rng.uniform(-1, 1, (n, 2))
        g = rng.uniform(-1, 1, (n, 2))
        ok = np.linalg.norm(g - s, axis=1) >= MIN_GOAL_DIST
        take = min(int(ok.sum()), n - filled)
        start[filled:filled + take] = s[ok][:take]
        goal[filled:filled + take] = g[ok][:take]
        filled += take
    line = goal - start
    normal = np.stack([-line[:, 1], line[:, 0]], 1) / np.linalg.norm(line, axis=1, keepdims=True)
    shift = rng.uniform(*SHIFT_RANGE, n) * rng.choice([-1.0, 1.0], n)
    obstacle = (start + goal) / 2 + shift[:, None] * normal
    return {"start": start, "goal": goal, "obstacle": obstacle}


def _cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]


def _rotate(v: np.ndarray, angle: np.ndarray) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.stack([c * v[:, 0] - s * v[:, 1], s * v[:, 0] + c * v[:, 1]], 1)


def segment_distance(p: np.ndarray, q: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Distance from each point ``c`` to the segment ``p -> q`` (all ``[N, 2]``)."""
    pq = q - p
    length2 = np.maximum((pq * pq).sum(1), 1e-18)
    u = np.clip(((c - p) * pq).sum(1) / length2, 0.0, 1.0)
    return np.linalg.norm(p + u[:, None] * pq - c, axis=1)


def expert_step(pos: np.ndarray, goal: np.ndarray, obstacle: np.ndarray) -> np.ndarray:
    """The noiseless expert's displacement for one step, ``[N, 2]``.

    A modulated dynamical system (Khansari-Zadeh & Billard 2012): the nominal motion ``f`` (to the
    goal at ``min(V_MAX, GAIN * distance)``) is multiplied by ``E diag(1 - 1/G, 1 + 1/G) E^-1``
    with ``E`` = (normal, tangent) of the disc inflated by ``MARGIN`` and ``G = (d / R)^2``: the
    normal component vanishes on the inflated boundary and the tangential one grows, so the flow
    slides around it on the side ``f`` already leans to. Smooth in the state, which keeps the
    demos learnable by a small regressor (a tangent-following planner has a heading that turns
    arbitrarily fast near the disc).
    """
    to_goal = goal - pos
    dist = np.linalg.norm(to_goal, axis=1)
    speed = np.minimum(V_MAX, GAIN * dist)
    f = to_goal / np.maximum(dist, 1e-12)[:, None] * speed[:, None]
    away = pos - obstacle
    d = np.maximum(np.linalg.norm(away, axis=1), 1e-12)
    normal = away / d[:, None]
    tangent = np.stack([-normal[:, 1], normal[:, 0]], 1)
    inv_gamma = ((RADIUS + MARGIN) / d) ** 2
    f_n = (f * normal).sum(1)
    f_t = (f * tangent).sum(1)
    # Only the approach is modulated: moving away from the disc needs no deflection.
    lam_n = np.where(f_n < 0, 1.0 - inv_gamma, 1.0)
    v = (lam_n * f_n)[:, None] * normal + ((1.0 + inv_gamma) * f_t)[:, None] * tangent
    norm = np.linalg.norm(v, axis=1)
    return v * (np.minimum(norm, V_MAX) / np.maximum(norm, 1e-12))[:, None]


def observation(pos: np.ndarray, tasks: dict[str, np.ndarray]) -> np.ndarray:
    """What the policy sees (and stepnorm's "state"): position, goal, obstacle centre, ``[N, 6]``."""
    return np.concatenate([pos, tasks["goal"], tasks["obstacle"]], 1)


def expert_demos(rng: np.random.Generator, tasks: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Roll the noisy expert: ``(states [N, T, 6], actions [N, T, 2])`` with ``a_t`` the command at step t."""
    n = len(tasks["start"])
    pos = tasks["start"].copy()
    states = np.empty((n, EPISODE_LEN, 6))
    actions = np.empty((n, EPISODE_LEN, 2))
    for t in range(EPISODE_LEN):
        states[:, t] = observation(pos, tasks)
        command = pos + expert_step(pos, tasks["goal"], tasks["obstacle"]) + rng.normal(0, NOISE_STD, (n, 2))
        actions[:, t] = command
        pos = command
    return states, actions


def outcome(path: np.ndarray, tasks: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per task: final distance, whether any segment of ``path [N, T+1, 2]`` entered the disc, success per tolerance."""
    hit = np.zeros(len(path), bool)
    for t in range(path.shape[1] - 1):
        hit |= segment_distance(path[:, t], path[:, t + 1], tasks["obstacle"]) < RADIUS
    final = np.linalg.norm(path[:, -1] - tasks["goal"], axis=1)
    out = {"final_distance": final, "collided": hit}
    for tol in TOLERANCES:
        out[f"success@{tol}"] = (final < tol) & ~hit
    return out
