"""Name -> task metric class: built-ins named lazily (`classify`, `detect`, `segment`, `generic`;
`detect` imports its COCO evaluator only when it computes), third parties through the
`calib.metrics` entry-point group, on the one registry mechanism (`calib.plugins`), e.g.

    [project.entry-points."calib.metrics"]
    pose = "my_pkg.metrics:PoseMetric"
"""

from __future__ import annotations

from typing import Any

from calib.plugins import Registry

from .base import Metric

ENTRY_POINT_GROUP = "calib.metrics"

_registry: Registry[type[Metric]] = Registry("metric", Metric, ENTRY_POINT_GROUP, lazy={
    "classify": "calib.metrics.classify:ClassifyMetric",
    "detect": "calib.metrics.detect:DetectMetric",
    "segment": "calib.metrics.segment:SegmentMetric",
    "generic": "calib.metrics.generic:GenericMetric",
})


def register(cls: type[Metric]) -> type[Metric]:
    """Class decorator: make a metric available under `cls.name` (in-process registration)."""
    return _registry.register(cls)


def reload_plugins() -> None:
    """Forget discovered entry points; the next registry query scans them again."""
    _registry.reload_plugins()


def available_metrics() -> list[str]:
    """The built-ins in order, then installed plug-ins, sorted."""
    return _registry.names()


def metric_class(name: str) -> type[Metric]:
    """The class registered under `name`; imports its module on first use."""
    return _registry.get(name)


def get_metric(name: str, **params: Any) -> Metric:
    """A new metric accumulator `name` (params: the class's constructor arguments)."""
    return metric_class(name)(**params)


__all__ = ["ENTRY_POINT_GROUP", "available_metrics", "get_metric", "metric_class", "register", "reload_plugins"]
