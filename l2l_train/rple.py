"""RPLE: reinforced pseudo-label exploration (paper section 3.4, eq. 7-14, appendix B.3).

A DDPG agent picks, per unlabelled sample, a foreground and a background threshold on the
calibrated prior ``q_hat``; pixels with ``q_hat >= tau_fg`` become foreground, ``q_hat <=
tau_bg`` background, the rest (and a band around the foreground boundary, sized in
original-image pixels by :func:`band_in_input_frame`) are ignored.

Pieces, all on explicit tensors:

- state ``s = [mean(q_hat), std(q_hat), r_fg, r_bg, r_ign, A]`` (:func:`rple_state`), the
  ratios taken from the pseudo-label the *current* thresholds would produce;
- :class:`Actor` 6->64->64->2 (ReLU, tanh output squashed into the threshold ranges) and
  :class:`Critic` (6+2)->64->64->1; together 9,539 parameters, the paper's count;
- reward ``r = clip(l1 S_sep + l2 S_cons + l3 S_cov - l4 |dtau|, -R, R)`` (:func:`compute_reward`);
- :class:`ReplayBuffer` (a tensor ring buffer) and :class:`PseudoLabelAgent`, which ties
  them together with target networks, soft updates and Gaussian exploration noise.

Reading of the paper's DDPG specifics (its equations were lost in extraction):

- *Step.* One RL step is one self-training iteration on one unlabelled sample; a batch of
  B samples yields B transitions and the agent is updated once per batch (appendix B.3).
- *Current thresholds.* The agent keeps one pair of thresholds "in effect", starting at the
  initial 0.7/0.3 and moved to the batch mean of the chosen thresholds after each batch. The
  state's ratios are measured under them, and the stability penalty is
  ``|dtau| = |tau_fg - cur_fg| + |tau_bg - cur_bg|`` against them.
- *Next state.* The same sample's state after the action: its ``q_hat`` statistics and
  agreement unchanged, its ratios re-measured under the chosen thresholds. This is the only
  successor the loop observes without another forward pass, and it carries the action's
  consequence (what the selection becomes) into the bootstrap term.
- *Discount.* ``y = r + gamma * Q'(s', mu'(s'))`` with no terminal states: an episode is
  the whole training run. ``gamma = 0`` turns it into the contextual bandit that the
  one-step reading also supports; the default 0.9 keeps the paper's TD form with a short
  horizon, as the transitions chain only loosely.
- *Conditioning.* Both networks see centred inputs (state features mapped from [0, 1] to
  [-1, 1], thresholds from their ranges to [-1, 1]) and the critic learns ten times faster
  than the actor; without either, a critic still fitting the mean reward hands the actor
  a gradient along the mean input direction and the thresholds run to a corner of their
  ranges whatever the reward (seen on a toy reward that peaks inside them).

Under DDP every rank should ``observe`` the same all-gathered transitions: with one seed
the agents then stay identical without further communication.
"""

from __future__ import annotations

import copy
import operator
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from l2l_train.config import AgentConfig
from l2l_train.losses import BACKGROUND, FOREGROUND, IGNORE_INDEX

STATE_DIM = 6
ACTION_DIM = 2  # (tau_fg, tau_bg)
# Thresholds stay this fraction of their range inside its ends, so tau_bg < tau_fg holds
# strictly when the ranges share an end (0.5) and tanh saturates to +-1 in float32.
_INTERIOR = 1e-3


# ----------------------------------------------------------------------------- pseudo-labels


def static_thresholds(
    batch_size: int, tau_fg: float, tau_bg: float, device: torch.device | str | None = None
) -> Tensor:
    """Fixed thresholds for every sample, for methods without RPLE.

    Returns: (B, 2) as (tau_fg, tau_bg).
    """
    if not tau_bg < tau_fg:
        raise ValueError(f"expected tau_bg < tau_fg, got tau_bg={tau_bg}, tau_fg={tau_fg}")
    return torch.tensor([[tau_fg, tau_bg]], device=device).repeat(batch_size, 1)


def band_in_input_frame(band_original: float, original_hw: Tensor, input_size: int) -> Tensor:
    """Per-sample ignore-band widths in the model's input frame for a band of
    ``band_original`` pixels of each original image, the original stretched to an
    ``input_size`` x ``input_size`` square.

    ``width = band_original * input_size / max(H, W)``, rounded to the nearest odd integer
    (a tie, at an even ``width``, goes to the smaller one) when ``band_original > 0`` and
    ``width >= 0.5``, else 0 (no band): ``[0.5, 2] -> 1``, ``(2, 4] -> 3``, ``(4, 6] -> 5``.

    Why the larger side: the stretch scales the axes differently (``S / W`` across a
    vertical boundary, ``S / H`` across a horizontal one), and one square max-pool kernel
    must serve both. Scaling by the larger side uses the smaller factor, so before the odd
    rounding the band covers at most ``band_original`` original pixels along either axis.
    The band exists to absorb a few pixels of boundary uncertainty, and over-wide bands are
    the failure this guards against (they erase small objects: at 128 -> 64 px a 3 px band
    leaves a perfect ``q_hat`` 36 % of its foreground), so the conservative side is the
    right one to err on; ties round down for the same reason. For a square original every
    choice of side agrees.

    Shapes: original_hw (B, 2) int as (H, W) -> (B,) int64 (0 or odd), on original_hw's device.
    """
    if band_original < 0:
        raise ValueError(f"band_original: expected >= 0 original pixels, got {band_original}")
    if input_size < 1:
        raise ValueError(f"input_size: expected >= 1, got {input_size}")
    if original_hw.dim() != 2 or original_hw.shape[1] != 2:
        raise ValueError(f"original_hw: expected (B, 2) as (H, W), got {tuple(original_hw.shape)}")
    if (original_hw < 1).any():
        raise ValueError("original_hw: every original side must be >= 1 pixel")
    # float64: the ties (even widths such as 3 * 480 / 720 = 2) then land exactly.
    side = original_hw.amax(dim=1).to(torch.float64)
    width = band_original * input_size / side
    # Nearest odd 2k + 1 with ties down: k = ceil((width - 2) / 2), >= 0 for width >= 0.5.
    k = torch.ceil((width - 2.0) / 2.0).clamp_min(0).to(torch.int64)
    keep = (width >= 0.5) & (band_original > 0)
    return torch.where(keep, 2 * k + 1, torch.zeros_like(k))


def _check_band_width(band_width: int | Tensor, batch: int) -> int | Tensor:
    """``band_width`` as a Python int (one width for every sample) or a (B,) int64 tensor,
    each width 0 (none) or a positive odd number of input-frame pixels."""
    if isinstance(band_width, Tensor):
        if band_width.shape != (batch,):
            raise ValueError(
                f"band_width: expected an int or a ({batch},) tensor of per-sample widths, "
                f"got shape {tuple(band_width.shape)}"
            )
        if band_width.dtype.is_floating_point or band_width.dtype.is_complex:
            raise TypeError(f"band_width: expected an integer tensor, got {band_width.dtype}")
        widths = band_width.long()
        if ((widths < 0) | ((widths % 2 == 0) & (widths != 0))).any():
            raise ValueError(
                f"band_width: expected 0 or positive odd widths, got {widths.tolist()}"
            )
        return widths
    try:
        width = operator.index(band_width)
    except TypeError:
        raise TypeError(
            f"band_width: expected an int or a (B,) int tensor of input-frame pixels, got "
            f"{band_width!r}; convert a width in original-image pixels with "
            f"band_in_input_frame"
        ) from None
    if width < 0 or (width % 2 == 0 and width != 0):
        raise ValueError(f"band_width: expected 0 or a positive odd band width, got {width}")
    return width


def foreground_edge_band(fg: Tensor, width: int | Tensor) -> Tensor:
    """Pixels within a band of ``width`` pixels centred on the foreground's edge pixels
    (foreground pixels with a non-foreground 8-neighbour): across a straight fg/bg boundary
    that is exactly ``width`` columns, ``width // 2 + 1`` of them foreground. The image border
    is not a boundary. ``width`` is one int for the batch or a (B,) int tensor of per-sample
    widths, each 0 (no band) or odd; the samples sharing a width are pooled together, so the
    cost is one max-pool per distinct width in the batch.

    Shapes: fg (B, H, W) bool, width int or (B,) int -> (B, H, W) bool.
    """
    width = _check_band_width(width, fg.shape[0])
    x = fg.float().unsqueeze(1)
    # max_pool2d pads with -inf, so the erosion treats outside the image as foreground.
    eroded = -F.max_pool2d(-x, 3, stride=1, padding=1)
    edge = x - eroded
    if not isinstance(width, Tensor):
        if width == 0:
            return torch.zeros_like(fg, dtype=torch.bool)
        return F.max_pool2d(edge, width, stride=1, padding=width // 2)[:, 0] > 0
    band = torch.zeros_like(fg, dtype=torch.bool)
    widths = width.to(fg.device)
    for w in torch.unique(widths).tolist():  # a few distinct widths per batch
        if w == 0:
            continue
        rows = (widths == w).nonzero()[:, 0]
        band[rows] = F.max_pool2d(edge[rows], w, stride=1, padding=w // 2)[:, 0] > 0
    return band


def pseudo_labels(q_hat: Tensor, thresholds: Tensor, band_width: int | Tensor) -> Tensor:
    """Three-way pseudo-label from the calibrated prior: ``q_hat >= tau_fg`` foreground,
    ``q_hat <= tau_bg`` background, the rest ignored, then the foreground edge band ignored
    as well. ``band_width`` is in pixels of ``q_hat``'s (input) frame, 0 for none: one int
    for every sample, or a (B,) int tensor of per-sample widths (0 or odd), as
    :func:`band_in_input_frame` gives for a band set in original-image pixels.

    Shapes: q_hat (B, 1, H, W), thresholds (B, 2) as (tau_fg, tau_bg), band_width int or (B,).
    Returns: (B, H, W) uint8 in {0, 1, IGNORE_INDEX}.
    """
    if q_hat.dim() != 4 or q_hat.shape[1] != 1:
        raise ValueError(f"q_hat: expected (B, 1, H, W), got {tuple(q_hat.shape)}")
    if thresholds.shape != (q_hat.shape[0], ACTION_DIM):
        raise ValueError(
            f"thresholds: expected ({q_hat.shape[0]}, 2) as (tau_fg, tau_bg), "
            f"got {tuple(thresholds.shape)}"
        )
    band_width = _check_band_width(band_width, q_hat.shape[0])
    q = q_hat[:, 0]
    tau_fg = thresholds[:, 0].view(-1, 1, 1).to(q.dtype)
    tau_bg = thresholds[:, 1].view(-1, 1, 1).to(q.dtype)
    fg = q >= tau_fg
    labels = torch.full(q.shape, IGNORE_INDEX, dtype=torch.uint8, device=q.device)
    labels[q <= tau_bg] = BACKGROUND
    labels[fg] = FOREGROUND
    if isinstance(band_width, Tensor) or band_width:
        labels[foreground_edge_band(fg, band_width)] = IGNORE_INDEX
    return labels


def label_fractions(labels: Tensor) -> Tensor:
    """Fractions of foreground, background and ignored pixels per image.

    Shapes: labels (B, H, W) -> (B, 3) as (r_fg, r_bg, r_ign), rows summing to 1.
    """
    flat = labels.flatten(1)
    return torch.stack(
        [(flat == v).float().mean(1) for v in (FOREGROUND, BACKGROUND, IGNORE_INDEX)], dim=1
    )


def rple_state(
    q_hat: Tensor, agree: Tensor, thresholds: Tensor, band_width: int | Tensor
) -> Tensor:
    """The agent's state ``[mean(q_hat), std(q_hat), r_fg, r_bg, r_ign, A]`` per sample,
    the ratios measured on the pseudo-label ``thresholds`` would give (population std).
    ``band_width`` as in :func:`pseudo_labels` (input-frame pixels, int or per-sample (B,)).

    Shapes: q_hat (B, 1, H, W), agree (B,), thresholds (B, 2), band_width int or (B,) -> (B, 6).
    """
    flat = q_hat.detach().float().flatten(1)
    ratios = label_fractions(pseudo_labels(q_hat.detach(), thresholds, band_width))
    return torch.cat(
        [
            flat.mean(1, keepdim=True),
            flat.std(1, correction=0, keepdim=True),
            ratios,
            agree.detach().float().view(-1, 1).to(flat.device),
        ],
        dim=1,
    )


# ----------------------------------------------------------------------------- reward


class Reward(NamedTuple):
    """Per-sample reward and its terms, all (B,)."""

    total: Tensor  # clipped reward
    separability: Tensor  # S_sep
    consistency: Tensor  # S_cons
    coverage: Tensor  # S_cov
    change: Tensor  # |dtau|


def _masked_mean(values: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Mean of ``values`` over ``mask`` per image, and whether the mask is non-empty.

    Shapes: values, mask (B, H, W) -> (B,), (B,) bool; the mean is 0 where the mask is empty.
    """
    count = mask.flatten(1).sum(1)
    total = (values * mask).flatten(1).sum(1)
    return total / count.clamp_min(1), count > 0


def separability(p: Tensor, labels: Tensor, temperature: float) -> Tensor:
    """``S_sep = sigmoid((mu_fg - mu_bg) / T)``, ``mu_c`` the mean prediction over the pixels
    selected as class c; 0 when either class has no selected pixel (nothing to separate).

    Shapes: p (B, 1, H, W) probabilities, labels (B, H, W) -> (B,).
    """
    p = p.detach().float()[:, 0]
    mu_fg, has_fg = _masked_mean(p, labels == FOREGROUND)
    mu_bg, has_bg = _masked_mean(p, labels == BACKGROUND)
    return torch.sigmoid((mu_fg - mu_bg) / temperature) * (has_fg & has_bg)


def consistency(p: Tensor, q_hat: Tensor, labels: Tensor) -> Tensor:
    """``S_cons = 1 - mean |p - q_hat|`` over the selected pixels; 0 when none is selected.

    Shapes: p, q_hat (B, 1, H, W), labels (B, H, W) -> (B,).
    """
    gap = (p.detach().float() - q_hat.detach().float()).abs()[:, 0]
    mean_gap, has_any = _masked_mean(gap, labels != IGNORE_INDEX)
    return (1.0 - mean_gap) * has_any


def coverage(labels: Tensor) -> Tensor:
    """``S_cov``: the selected (non-ignored) fraction of pixels.

    Shapes: labels (B, H, W) -> (B,).
    """
    return (labels != IGNORE_INDEX).flatten(1).float().mean(1)


def threshold_change(thresholds: Tensor, previous: Tensor) -> Tensor:
    """``|dtau| = |tau_fg - prev_fg| + |tau_bg - prev_bg|``.

    Shapes: thresholds (B, 2), previous (B, 2) or (2,) -> (B,).
    """
    return (thresholds - previous).abs().sum(-1)


def compute_reward(
    p: Tensor,
    q_hat: Tensor,
    labels: Tensor,
    thresholds: Tensor,
    previous: Tensor,
    cfg: AgentConfig,
) -> Reward:
    """The instructional gain, clipped: ``clip(l_sep S_sep + l_cons S_cons + l_cov S_cov
    - l_stab |dtau|, -R, R)``. ``p`` is the model's prediction on the view the pseudo-label
    supervises (the strong view in the loop), so S_sep and S_cons score the labels where
    they are used.

    Shapes: p, q_hat (B, 1, H, W); labels (B, H, W); thresholds (B, 2); previous (B, 2) or (2,).
    """
    s_sep = separability(p, labels, cfg.temperature)
    s_cons = consistency(p, q_hat, labels)
    s_cov = coverage(labels)
    change = threshold_change(thresholds.float(), previous.float().to(thresholds.device))
    gain = (
        cfg.lambda_sep * s_sep
        + cfg.lambda_cons * s_cons
        + cfg.lambda_cov * s_cov
        - cfg.lambda_stab * change
    )
    total = gain.clamp(-cfg.reward_clip, cfg.reward_clip)
    return Reward(
        total=total, separability=s_sep, consistency=s_cons, coverage=s_cov, change=change
    )


# ----------------------------------------------------------------------------- networks


def _mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_dim, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, out_dim),
    )


def _centre_state(state: Tensor) -> Tensor:
    """Every state feature lies in [0, 1]; centring them on 0 keeps an untrained critic from
    reading "larger input, larger value" into every direction while it fits the mean reward."""
    return 2.0 * state - 1.0


def _threshold_box(cfg: AgentConfig) -> tuple[Tensor, Tensor]:
    """Lower and upper ends (2,) of the (tau_fg, tau_bg) ranges."""
    return (
        torch.tensor([cfg.tau_fg_min, cfg.tau_bg_min]),
        torch.tensor([cfg.tau_fg_max, cfg.tau_bg_max]),
    )


class Actor(nn.Module):
    """Deterministic policy: state (B, 6) -> thresholds (B, 2) as (tau_fg, tau_bg), each
    ``lo + (hi - lo) * (1/2 + (1/2 - margin) tanh(z))`` inside its configured range.

    The output layer starts near zero weight with a bias that emits the initial thresholds
    (0.7/0.3 by default) for any state, so exploration starts there.
    """

    def __init__(self, cfg: AgentConfig) -> None:
        super().__init__()
        self.net = _mlp(STATE_DIM, cfg.hidden, ACTION_DIM)
        lo, hi = _threshold_box(cfg)
        self.register_buffer("lo", lo)
        self.register_buffer("hi", hi)
        init = torch.tensor([cfg.tau_fg_init, cfg.tau_bg_init])
        out = self.net[-1]
        with torch.no_grad():
            # DDPG's small final-layer init (Lillicrap et al.): the policy starts flat.
            out.weight.uniform_(-3e-3, 3e-3)
            unit = ((init - self.lo) / (self.hi - self.lo) - 0.5) / (0.5 - _INTERIOR)
            out.bias.copy_(torch.atanh(unit.clamp(-0.999, 0.999)))

    def forward(self, state: Tensor) -> Tensor:
        z = self.net(_centre_state(state))
        return self.lo + (self.hi - self.lo) * (0.5 + (0.5 - _INTERIOR) * torch.tanh(z))

    def clamp(self, thresholds: Tensor) -> Tensor:
        """Bring (noisy) thresholds (B, 2) back inside the ranges, margin included."""
        margin = _INTERIOR * (self.hi - self.lo)
        return thresholds.clamp(self.lo + margin, self.hi - margin)


class Critic(nn.Module):
    """Action value: (state (B, 6), thresholds (B, 2)) -> Q (B,). Both inputs are centred
    first: the state from [0, 1] and the thresholds from their ranges to [-1, 1]."""

    def __init__(self, cfg: AgentConfig) -> None:
        super().__init__()
        self.net = _mlp(STATE_DIM + ACTION_DIM, cfg.hidden, 1)
        lo, hi = _threshold_box(cfg)
        self.register_buffer("mid", (lo + hi) / 2)
        self.register_buffer("half_span", (hi - lo) / 2)

    def forward(self, state: Tensor, thresholds: Tensor) -> Tensor:
        action = (thresholds - self.mid) / self.half_span
        return self.net(torch.cat([_centre_state(state), action], dim=1))[:, 0]


@torch.no_grad()
def soft_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    """Polyak averaging ``target <- tau * online + (1 - tau) * target``, in place."""
    for t, o in zip(target.parameters(), online.parameters(), strict=True):
        t.lerp_(o, tau)


# ----------------------------------------------------------------------------- replay buffer


class ReplayBuffer:
    """Fixed-capacity ring buffer of transitions (s, a, r, s') held as tensors, so it moves
    to a device and saves into a checkpoint as a plain state dict."""

    def __init__(self, capacity: int, device: torch.device | str | None = None) -> None:
        if capacity < 1:
            raise ValueError(f"capacity: expected >= 1, got {capacity}")
        self.capacity = capacity
        self.state = torch.zeros(capacity, STATE_DIM, device=device)
        self.action = torch.zeros(capacity, ACTION_DIM, device=device)
        self.reward = torch.zeros(capacity, device=device)
        self.next_state = torch.zeros(capacity, STATE_DIM, device=device)
        self.ptr = 0  # next slot to write
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def add(self, state: Tensor, action: Tensor, reward: Tensor, next_state: Tensor) -> None:
        """Append a batch of transitions, overwriting the oldest once full.

        Shapes: state, next_state (B, 6); action (B, 2); reward (B,).
        """
        n = state.shape[0]
        shapes = {
            "state": (state, (n, STATE_DIM)),
            "action": (action, (n, ACTION_DIM)),
            "reward": (reward, (n,)),
            "next_state": (next_state, (n, STATE_DIM)),
        }
        for name, (tensor, expected) in shapes.items():
            if tuple(tensor.shape) != expected:
                raise ValueError(f"{name}: expected shape {expected}, got {tuple(tensor.shape)}")
        keep = min(n, self.capacity)  # a batch larger than the buffer keeps its newest rows
        idx = (self.ptr + torch.arange(keep)) % self.capacity
        idx = idx.to(self.state.device)
        for store, tensor in (
            (self.state, state),
            (self.action, action),
            (self.reward, reward),
            (self.next_state, next_state),
        ):
            store[idx] = tensor[n - keep :].detach().to(store)
        self.ptr = (self.ptr + keep) % self.capacity
        self.size = min(self.size + keep, self.capacity)

    def sample(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``n`` transitions drawn uniformly with replacement (a CPU ``generator``)."""
        if self.size == 0:
            raise RuntimeError("sample() called on an empty replay buffer")
        idx = torch.randint(self.size, (n,), generator=generator).to(self.state.device)
        return self.state[idx], self.action[idx], self.reward[idx], self.next_state[idx]

    def state_dict(self) -> dict[str, Any]:
        return {
            "state": self.state[: self.size].cpu(),
            "action": self.action[: self.size].cpu(),
            "reward": self.reward[: self.size].cpu(),
            "next_state": self.next_state[: self.size].cpu(),
            "ptr": self.ptr,
            "capacity": self.capacity,
        }

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        if sd["capacity"] != self.capacity:
            raise ValueError(
                f"replay buffer: checkpoint capacity {sd['capacity']} != configured "
                f"{self.capacity} (agent.buffer_size)"
            )
        size = sd["state"].shape[0]
        for name in ("state", "action", "reward", "next_state"):
            getattr(self, name)[:size] = sd[name].to(getattr(self, name))
        self.ptr, self.size = sd["ptr"], size


# ----------------------------------------------------------------------------- agent


class PseudoLabelAgent:
    """The DDPG pseudo-label agent: actor, critic, their targets, optimisers, replay buffer
    and the thresholds currently in effect. Dropped at inference.

    Per batch of unlabelled samples the loop calls::

        band = band_in_input_frame(cfg.ignore_band, original_hw, image_size)  # (B,)
        s = agent.make_state(q_hat, agree, band)       # ratios under agent.current
        thr = agent.act(s, explore=True)               # (B, 2)
        labels = pseudo_labels(q_hat, thr, band)
        ...  # strong-view forward and loss
        r = compute_reward(p_s, q_hat, labels, thr, agent.current, cfg)
        agent.observe(s, thr, r.total, rple_state(q_hat, agree, thr, band))
        agent.update()

    ``cfg.ignore_band`` is in original-image pixels; the calls here take input-frame widths.
    """

    _STATE_KEYS = (
        "actor",
        "critic",
        "actor_target",
        "critic_target",
        "actor_opt",
        "critic_opt",
        "buffer",
        "generator",
        "current",
        "updates",
    )

    def __init__(self, cfg: AgentConfig, device: torch.device | str | None = None) -> None:
        self.cfg = cfg
        self.device = torch.device(device or "cpu")
        self.actor = Actor(cfg).to(self.device)
        self.critic = Critic(cfg).to(self.device)
        self.actor_target = copy.deepcopy(self.actor).requires_grad_(False)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=cfg.actor_lr)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr)
        self.buffer = ReplayBuffer(cfg.buffer_size, self.device)
        # Its own generator (exploration noise, replay sampling) makes a resumed run draw
        # the same numbers it would have drawn without the interruption.
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.current = torch.tensor([cfg.tau_fg_init, cfg.tau_bg_init], device=self.device)
        self.updates = 0

    def make_state(self, q_hat: Tensor, agree: Tensor, band_width: int | Tensor) -> Tensor:
        """State (B, 6) with ratios under the current thresholds; ``band_width`` in
        input-frame pixels as in :func:`pseudo_labels` (not ``cfg.ignore_band``, which is in
        original-image pixels: convert it with :func:`band_in_input_frame`)."""
        current = self.current.expand(q_hat.shape[0], ACTION_DIM).to(q_hat.device)
        return rple_state(q_hat, agree, current, band_width)

    @torch.no_grad()
    def act(self, state: Tensor, explore: bool) -> Tensor:
        """Thresholds (B, 2) as (tau_fg, tau_bg) for states (B, 6); with ``explore``, plus
        Gaussian noise of ``noise_std``, clamped back into the ranges."""
        # The loop may run under bf16 autocast; thresholds need fp32 resolution.
        with torch.autocast(self.device.type, enabled=False):
            thresholds = self.actor(state.float().to(self.device))
            if explore and self.cfg.noise_std > 0:
                noise = torch.randn(thresholds.shape, generator=self.generator)
                thresholds = self.actor.clamp(
                    thresholds + self.cfg.noise_std * noise.to(thresholds)
                )
        return thresholds

    def observe(
        self, state: Tensor, thresholds: Tensor, reward: Tensor, next_state: Tensor
    ) -> None:
        """Store B transitions and make the batch's mean thresholds the current ones.

        Shapes: state, next_state (B, 6); thresholds (B, 2); reward (B,).
        """
        self.buffer.add(state, thresholds, reward, next_state)
        self.current = thresholds.detach().float().mean(0).to(self.device)

    def update(self) -> dict[str, float]:
        """One DDPG step on a replay batch: critic towards ``r + gamma Q'(s', mu'(s'))``,
        actor up the critic's gradient, then soft target updates. Returns the losses, or
        an empty dict while the buffer holds less than one batch."""
        cfg = self.cfg
        if len(self.buffer) < cfg.batch_size:
            return {}
        with torch.autocast(self.device.type, enabled=False):
            s, a, r, s_next = self.buffer.sample(cfg.batch_size, self.generator)
            with torch.no_grad():
                target = r + cfg.gamma * self.critic_target(s_next, self.actor_target(s_next))
            critic_loss = F.mse_loss(self.critic(s, a), target)
            self.critic_opt.zero_grad(set_to_none=True)
            critic_loss.backward()
            self.critic_opt.step()

            # The critic is held fixed here: only the actor follows dQ/da.
            self.critic.requires_grad_(False)
            actor_loss = -self.critic(s, self.actor(s)).mean()
            self.actor_opt.zero_grad(set_to_none=True)
            actor_loss.backward()
            self.actor_opt.step()
            self.critic.requires_grad_(True)

            soft_update(self.critic_target, self.critic, cfg.soft_update_tau)
            soft_update(self.actor_target, self.actor, cfg.soft_update_tau)
        self.updates += 1
        return {
            "critic_loss": critic_loss.item(),
            "actor_loss": actor_loss.item(),  # -mean Q(s, mu(s))
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "actor_target": self.actor_target.state_dict(),
            "critic_target": self.critic_target.state_dict(),
            "actor_opt": self.actor_opt.state_dict(),
            "critic_opt": self.critic_opt.state_dict(),
            "buffer": self.buffer.state_dict(),
            "generator": self.generator.get_state(),
            "current": self.current.cpu(),
            "updates": self.updates,
        }

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        missing = set(self._STATE_KEYS) - set(sd)
        if missing:
            raise KeyError(f"agent state dict lacks {sorted(missing)}")
        for name in ("actor", "critic", "actor_target", "critic_target"):
            getattr(self, name).load_state_dict(sd[name])
        self.actor_opt.load_state_dict(sd["actor_opt"])
        self.critic_opt.load_state_dict(sd["critic_opt"])
        self.buffer.load_state_dict(sd["buffer"])
        self.generator.set_state(sd["generator"])
        self.current = sd["current"].to(self.device)
        self.updates = sd["updates"]
