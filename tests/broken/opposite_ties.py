"""The opposite tie rule: on equal scores the *smaller* index is propagated first."""

import torch

from gtp_ref.backends.dense import *  # noqa: F401,F403


def select_tokens(scores, num_prop):
    order = torch.sort(scores, dim=-1, stable=True).indices  # ties: smaller index first
    return order[:, num_prop:].sort(-1).values, order[:, :num_prop]
