"""RPLE's DDPG agent: actor and critic, their target networks, a tensor replay buffer and
:class:`PseudoLabelAgent`, which picks per-sample thresholds and learns from the reward."""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from l2l_train.config import AgentConfig
from l2l_train.rple.reward import STATE_DIM, rple_state
from l2l_train.targets import THRESHOLD_DIM as ACTION_DIM

# Thresholds stay this fraction of their range inside its ends, so tau_bg < tau_fg holds
# strictly when the ranges share an end (0.5) and tanh saturates to +-1 in float32.
_INTERIOR = 1e-3


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

            # The critic is held fixed here: only the actor follows dQ/da, and only once the
            # critic has had actor_delay updates: before, its slope is its random init's.
            self.critic.requires_grad_(False)
            actor_loss = -self.critic(s, self.actor(s)).mean()
            if self.updates >= cfg.actor_delay:
                self.actor_opt.zero_grad(set_to_none=True)
                actor_loss.backward()
                self.actor_opt.step()
                soft_update(self.actor_target, self.actor, cfg.soft_update_tau)
            self.critic.requires_grad_(True)
            soft_update(self.critic_target, self.critic, cfg.soft_update_tau)
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
