"""The Selector protocol and what a selector may read, re-exported from :mod:`raise_select.protocol`.

The types live in the neutral :mod:`raise_select.protocol`, which both the environment and the
selectors import; this module keeps ``from raise_select.selectors.base import ...`` working.
"""

from __future__ import annotations

from ..protocol import DEFAULT_STATIC_EPOCHS, EnvState, Explains, HasClusters, SelectionContext, Selector

__all__ = ["DEFAULT_STATIC_EPOCHS", "EnvState", "Explains", "HasClusters", "SelectionContext", "Selector"]
