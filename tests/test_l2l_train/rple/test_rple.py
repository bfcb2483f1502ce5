"""RPLE against hand-computed values: pseudo-labels, state, reward terms, networks, DDPG."""

import copy
import math
import re

import pytest
import torch

from l2l_train.config import AgentConfig, TrainConfig
from l2l_train.losses import IGNORE_INDEX
from l2l_train.rple import (
    Actor,
    Critic,
    PseudoLabelAgent,
    ReplayBuffer,
    compute_reward,
    consistency,
    coverage,
    label_fractions,
    rple_state,
    separability,
    soft_update,
    threshold_change,
)
from pipeline.schema import ConfigError, build_section

X = IGNORE_INDEX
Q_HAT = torch.tensor([[0.9, 0.6], [0.2, 0.1]]).view(1, 1, 2, 2)
THR = torch.tensor([[0.7, 0.3]])
# Q_HAT under (0.7, 0.3): 0.9 fg, 0.6 ignored, 0.2 and 0.1 bg.
LABELS = torch.tensor([[1, X], [0, 0]], dtype=torch.uint8).view(1, 2, 2)


def test_label_fractions_and_state():
    assert torch.allclose(label_fractions(LABELS), torch.tensor([[0.25, 0.5, 0.25]]))
    # mean = (0.9 + 0.6 + 0.2 + 0.1) / 4 = 0.45
    # deviations 0.45, 0.15, -0.25, -0.35 -> squares 0.2025 + 0.0225 + 0.0625 + 0.1225 = 0.41
    # population std = sqrt(0.41 / 4) = 0.320156
    state = rple_state(Q_HAT, torch.tensor([0.6]), THR, band_width=0)
    expected = torch.tensor([[0.45, math.sqrt(0.1025), 0.25, 0.5, 0.25, 0.6]])
    assert torch.allclose(state, expected, atol=1e-6)


def test_thresholds_stay_in_range_and_ordered_for_random_inputs():
    torch.manual_seed(0)
    cfg = AgentConfig()
    actor = Actor(cfg)
    with torch.no_grad():  # large weights saturate tanh at both ends
        for p in actor.parameters():
            p.mul_(50.0)
    states = torch.randn(4096, 6) * 10
    thr = actor(states)
    assert thr[:, 0].min() > 0.5 and thr[:, 0].max() <= 0.95
    assert thr[:, 1].min() >= 0.05 and thr[:, 1].max() < 0.5
    assert (thr[:, 1] < thr[:, 0]).all()
    noisy = actor.clamp(thr + torch.randn_like(thr))
    assert (noisy[:, 1] < noisy[:, 0]).all() and noisy.min() >= 0.05 and noisy.max() <= 0.95


def test_actor_starts_at_the_initial_thresholds():
    torch.manual_seed(0)
    thr = Actor(AgentConfig()).forward(torch.rand(256, 6))
    assert torch.allclose(thr, torch.tensor([0.7, 0.3]).expand(256, 2), atol=0.01)


def test_networks_have_the_papers_parameter_count():
    # Appendix: actor + critic = 0.009539M parameters.
    # actor 6*64+64 + 64*64+64 + 64*2+2 = 4738; critic 8*64+64 + 64*64+64 + 64+1 = 4801
    cfg = AgentConfig()
    n = sum(p.numel() for m in (Actor(cfg), Critic(cfg)) for p in m.parameters())
    assert n == 9539


# ----------------------------------------------------------------------------- reward

# Strong prediction for the reward tests; LABELS select (0,0) fg and (1,0), (1,1) bg.
P_S = torch.tensor([[0.8, 0.5], [0.3, 0.1]]).view(1, 1, 2, 2)


def test_separability():
    # mu_fg = 0.8, mu_bg = (0.3 + 0.1) / 2 = 0.2; sigmoid(0.6 / 0.25) = sigmoid(2.4) = 0.916827
    assert separability(P_S, LABELS, 0.25).item() == pytest.approx(0.916827, abs=1e-6)
    no_fg = torch.tensor([[X, X], [0, 0]], dtype=torch.uint8).view(1, 2, 2)
    assert separability(P_S, no_fg, 0.25).item() == 0.0


def test_consistency():
    # selected: |0.8 - 0.9| = 0.1, |0.3 - 0.2| = 0.1, |0.1 - 0.1| = 0 -> 1 - 0.2/3 = 0.933333
    assert consistency(P_S, Q_HAT, LABELS).item() == pytest.approx(1 - 0.2 / 3, abs=1e-6)
    nothing = torch.full((1, 2, 2), X, dtype=torch.uint8)
    assert consistency(P_S, Q_HAT, nothing).item() == 0.0


def test_coverage_and_threshold_change():
    assert coverage(LABELS).item() == 0.75  # 3 of 4 pixels selected
    # |0.8 - 0.7| + |0.25 - 0.3| = 0.15
    change = threshold_change(torch.tensor([[0.8, 0.25]]), torch.tensor([0.7, 0.3]))
    assert change.item() == pytest.approx(0.15)


def test_reward_combines_and_clips():
    thr, prev = torch.tensor([[0.8, 0.25]]), torch.tensor([0.7, 0.3])
    # 0.3*0.916827 + 0.4*0.933333 + 0.3*0.75 - 0.2*0.15
    # = 0.275048 + 0.373333 + 0.225 - 0.03 = 0.843381
    r = compute_reward(P_S, Q_HAT, LABELS, thr, prev, AgentConfig())
    assert r.total.item() == pytest.approx(0.843381, abs=1e-5)
    assert r.coverage.item() == 0.75 and r.change.item() == pytest.approx(0.15)
    # R = 0.5 clips it from above ...
    assert (
        compute_reward(P_S, Q_HAT, LABELS, thr, prev, AgentConfig(reward_clip=0.5)).total.item()
        == 0.5
    )
    # ... and lambda_stab = 10 gives 0.873381 - 1.5 = -0.626619, clipped to -0.5 from below.
    low = compute_reward(
        P_S, Q_HAT, LABELS, thr, prev, AgentConfig(reward_clip=0.5, lambda_stab=10.0)
    )
    assert low.total.item() == -0.5


# ----------------------------------------------------------------------------- DDPG parts


def test_soft_update():
    # target <- 0.1 * online + 0.9 * target: weight 0.1*1 + 0.9*0 = 0.1, bias 0.1*2 = 0.2
    online, target = torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)
    with torch.no_grad():
        online.weight.fill_(1.0)
        online.bias.fill_(2.0)
        target.weight.fill_(0.0)
        target.bias.fill_(0.0)
    soft_update(target, online, 0.1)
    assert target.weight.item() == pytest.approx(0.1)
    assert target.bias.item() == pytest.approx(0.2)


def test_replay_buffer_wraps_and_round_trips():
    buf = ReplayBuffer(3)

    def batch(values):
        v = torch.tensor(values, dtype=torch.float32)
        return (
            v.view(-1, 1).expand(-1, 6),
            v.view(-1, 1).expand(-1, 2),
            v,
            v.view(-1, 1).expand(-1, 6),
        )

    buf.add(*batch([1, 2]))
    buf.add(*batch([3, 4]))  # 4 overwrites the oldest slot (0)
    assert len(buf) == 3 and buf.ptr == 1
    assert buf.reward.tolist() == [4.0, 2.0, 3.0]
    other = ReplayBuffer(3)
    other.load_state_dict(buf.state_dict())
    assert other.reward.tolist() == [4.0, 2.0, 3.0] and other.ptr == 1 and len(other) == 3
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(4).load_state_dict(buf.state_dict())
    with pytest.raises(ValueError, match="reward: expected shape"):
        buf.add(torch.zeros(2, 6), torch.zeros(2, 2), torch.zeros(3), torch.zeros(2, 6))


def _fill(agent: PseudoLabelAgent, n: int, target: torch.Tensor, gen: torch.Generator) -> None:
    """n transitions whose reward peaks at ``target`` thresholds: 1 - 4 |a - target|^2."""
    s = torch.rand(n, 6, generator=gen)
    a = agent.act(s, explore=True)
    agent.observe(s, a, 1 - 4 * ((a - target) ** 2).sum(1), s)


def test_one_update_moves_the_actor_up_the_critic():
    torch.manual_seed(0)
    cfg = AgentConfig(batch_size=64, buffer_size=64, gamma=0.0, noise_std=0.1)
    agent = PseudoLabelAgent(cfg)
    _fill(agent, 64, torch.tensor([0.85, 0.15]), torch.Generator().manual_seed(1))
    before = copy.deepcopy(agent.actor)
    losses = agent.update()
    assert set(losses) == {"critic_loss", "actor_loss"}
    s = agent.buffer.state
    with torch.no_grad():  # the critic the actor step used is the updated one
        assert agent.critic(s, agent.actor(s)).mean() > agent.critic(s, before(s)).mean()


def test_actor_waits_for_actor_delay_updates_while_the_critic_learns():
    cfg = AgentConfig(batch_size=64, buffer_size=64, gamma=0.0, noise_std=0.1, actor_delay=2)
    agent = PseudoLabelAgent(cfg)
    _fill(agent, 64, torch.tensor([0.85, 0.15]), torch.Generator().manual_seed(1))
    actor, critic = copy.deepcopy(agent.actor.state_dict()), copy.deepcopy(agent.critic)
    for _ in range(2):
        assert set(agent.update()) == {"critic_loss", "actor_loss"}
    for name, value in agent.actor.state_dict().items():
        assert torch.equal(value, actor[name]), name
        assert torch.equal(agent.actor_target.state_dict()[name], actor[name]), name
    assert not torch.equal(agent.critic.net[0].weight, critic.net[0].weight)
    agent.update()  # the third: the actor's first step
    assert not torch.equal(agent.actor.net[0].weight, actor["net.0.weight"])


def test_update_waits_for_one_batch():
    agent = PseudoLabelAgent(AgentConfig(batch_size=8))
    _fill(agent, 7, torch.tensor([0.8, 0.2]), torch.Generator().manual_seed(0))
    assert agent.update() == {}


@pytest.mark.slow  # 300 agent updates: about 5 s on a busy 2-core CPU
def test_ddpg_learns_the_threshold_a_toy_reward_peaks_at():
    # Reward 1 - 4 |tau - (0.85, 0.15)|^2 whatever the state: a bandit (gamma 0) whose best
    # action is known. From (0.7, 0.3) the actor should end near (0.85, 0.15).
    torch.manual_seed(0)
    cfg = AgentConfig(gamma=0.0, batch_size=32, buffer_size=2000, actor_lr=3e-4, critic_lr=3e-3)
    agent = PseudoLabelAgent(cfg)
    target = torch.tensor([0.85, 0.15])
    gen = torch.Generator().manual_seed(1)
    probe = torch.rand(256, 6, generator=gen)
    start = (agent.actor(probe).mean(0) - target).norm().item()
    for _ in range(300):
        _fill(agent, 32, target, gen)
        agent.update()
    end = (agent.actor(probe).mean(0) - target).norm().item()
    assert start == pytest.approx(0.212, abs=0.01)  # |(0.15, 0.15)|
    assert end < 0.04  # 0.004 with these seeds; 0.023 at worst over seeds 0-4


def test_agent_state_dict_round_trip_resumes_identically():
    torch.manual_seed(0)
    cfg = AgentConfig(batch_size=16, buffer_size=100)
    agent = PseudoLabelAgent(cfg)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        _fill(agent, 8, torch.tensor([0.8, 0.2]), gen)
        agent.update()
    saved = copy.deepcopy(agent.state_dict())
    resumed = PseudoLabelAgent(cfg)
    resumed.load_state_dict(saved)
    s = torch.rand(4, 6)
    assert torch.equal(agent.act(s, explore=True), resumed.act(s, explore=True))
    assert agent.update() == resumed.update()
    assert torch.equal(agent.current, resumed.current) and resumed.updates == agent.updates
    with pytest.raises(KeyError, match="buffer"):
        resumed.load_state_dict({k: v for k, v in saved.items() if k != "buffer"})


def test_observe_makes_the_batch_mean_current_and_make_state_uses_it():
    agent = PseudoLabelAgent(AgentConfig())
    assert agent.current.tolist() == pytest.approx([0.7, 0.3])
    agent.observe(
        torch.zeros(2, 6), torch.tensor([[0.8, 0.2], [0.6, 0.4]]), torch.zeros(2), torch.zeros(2, 6)
    )
    assert agent.current.tolist() == pytest.approx([0.7, 0.3])  # mean of the two rows
    agent.observe(
        torch.zeros(1, 6), torch.tensor([[0.85, 0.15]]), torch.zeros(1), torch.zeros(1, 6)
    )
    # Under (0.85, 0.15), Q_HAT has 0.9 fg, 0.1 bg, 0.6 and 0.2 ignored.
    state = agent.make_state(Q_HAT, torch.tensor([0.5]), 0)
    assert state[0, 2:5].tolist() == pytest.approx([0.25, 0.25, 0.5])


def test_agent_config_is_validated_at_load():
    # ignore_band is in original-image pixels: any width >= 0, the odd rounding comes later.
    assert build_section(TrainConfig, {"agent": {"ignore_band": 2}}).agent.ignore_band == 2.0
    assert build_section(TrainConfig, {"agent": {"ignore_band": 1.5}}).agent.ignore_band == 1.5
    with pytest.raises(ConfigError, match=re.escape("agent.ignore_band: expected a float >= 0")):
        build_section(TrainConfig, {"agent": {"ignore_band": -1}})
    with pytest.raises(ConfigError, match="tau_bg_max"):
        build_section(TrainConfig, {"agent": {"tau_bg_max": 0.6}})
    with pytest.raises(ConfigError, match="tau_fg_init"):
        build_section(TrainConfig, {"agent": {"tau_fg_init": 0.99}})
    with pytest.raises(ConfigError, match=re.escape("tau_fg: expected a float in (0.5, 1]")):
        build_section(TrainConfig, {"tau_fg": 0.5})
