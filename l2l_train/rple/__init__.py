"""RPLE: reinforced pseudo-label exploration (paper section 3.4, eq. 7-14, appendix B.3).

A DDPG agent picks, per unlabelled sample, a foreground and a background threshold on the
calibrated prior ``q_hat``; pixels with ``q_hat >= tau_fg`` become foreground, ``q_hat <=
tau_bg`` background, the rest (and a band around the foreground boundary, sized in
original-image pixels by :func:`~l2l_train.targets.band_in_input_frame`) are ignored.

Pieces, all on explicit tensors:

- state ``s = [mean(q_hat), std(q_hat), r_fg, r_bg, r_ign, A]`` (:func:`rple_state`), the
  ratios taken from the pseudo-label (:func:`~l2l_train.targets.pseudo_labels`) the
  *current* thresholds would produce;
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

Modules: :mod:`~l2l_train.rple.reward` (state and reward terms, pure functions) and
:mod:`~l2l_train.rple.agent` (the networks, the replay buffer and the agent).
"""

from l2l_train.rple.agent import Actor, Critic, PseudoLabelAgent, ReplayBuffer, soft_update
from l2l_train.rple.reward import (
    STATE_DIM,
    Reward,
    compute_reward,
    consistency,
    coverage,
    label_fractions,
    rple_state,
    separability,
    threshold_change,
)

__all__ = [
    "STATE_DIM",
    "Actor",
    "Critic",
    "PseudoLabelAgent",
    "ReplayBuffer",
    "Reward",
    "compute_reward",
    "consistency",
    "coverage",
    "label_fractions",
    "rple_state",
    "separability",
    "soft_update",
    "threshold_change",
]
