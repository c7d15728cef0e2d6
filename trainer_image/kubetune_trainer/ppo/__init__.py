"""kubetune's own PPO (TRL 1.16 removed PPOTrainer). The recipe (``recipes/ppo.py``) runs the loop;
this package holds its parts, each small enough to test on tiny tensors:

- ``rollout``: sample responses from the policy, cut them at the first end-of-sequence token, and
  score every response token under the policy, the frozen reference and the value model;
- ``advantages``: masked statistics, whitening, per-token rewards with the KL penalty, and GAE;
- ``kl``: fixed and adaptive (Ziegler et al., 2019) KL coefficient controllers;
- ``losses``: the clipped policy and value losses with their statistics;
- ``value_head``: the value model (a trunk and a scalar head);
- ``distributed``: the few all-reduces the loop needs when torch.distributed runs several ranks;
- ``prompts``: the seeded order in which prompts are fed, split over ranks;
- ``state``: what a checkpoint holds beyond the weights, and restoring it exactly.
"""
