"""A selector's mutable state between decisions, as JSON: what a checkpoint must hold to resume it.

Selectors keep little state of their own (the environment owns counts and validation history):
NumPy random generators and :class:`~raise_select.selectors.simple.EpochSampler` positions. Those
are found among the selector's attributes and saved generically; a selector with other state
defines ``state_dict()`` / ``load_state_dict(state)`` and is saved through them instead. RAISE's
deployment is greedy and keeps none (its choice is a function of the environment state).
"""

from __future__ import annotations

import numpy as np

from .simple import EpochSampler


def selector_state(selector) -> dict:
    """JSON-ready state of ``selector``'s random generators and epoch samplers (keyed by attribute name)."""
    if hasattr(selector, "state_dict"):
        return {"custom": selector.state_dict()}
    state = {}
    for name, value in vars(selector).items():
        if isinstance(value, np.random.Generator):
            state[name] = {"generator": value.bit_generator.state}
        elif isinstance(value, EpochSampler):
            state[name] = {
                "epoch_sampler": {
                    "epoch": value.epoch,
                    "position": value._position,
                    "order": value._order.tolist(),
                    "generator": value.rng.bit_generator.state,
                }
            }
    return state


def load_selector_state(selector, state: dict) -> None:
    """Put back what :func:`selector_state` saved (the selector must be set up and reset first)."""
    if "custom" in state:
        selector.load_state_dict(state["custom"])
        return
    for name, saved in state.items():
        value = getattr(selector, name)
        if "generator" in saved:
            value.bit_generator.state = saved["generator"]
        else:
            sampler = saved["epoch_sampler"]
            value.epoch, value._position = sampler["epoch"], sampler["position"]
            value._order = np.asarray(sampler["order"], dtype=np.int64)
            value.rng.bit_generator.state = sampler["generator"]
