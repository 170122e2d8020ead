"""Pools, target tasks, bundled sources and the synthetic testbed."""

from .types import Example, Pool, TargetTask

__all__ = ["Example", "Pool", "TargetTask"]
