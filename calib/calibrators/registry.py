"""Name -> calibrator class: built-ins via @register, third parties via the `calib.calibrators`
entry-point group (the mechanism, shared with flavors and backends: calib.plugins)."""

from __future__ import annotations

from typing import Any, Sequence

from calib.errors import CalibError

from calib.plugins import Registry

from .base import Calibrator
from .statistics import TensorStatistics

ENTRY_POINT_GROUP = "calib.calibrators"

_registry: Registry[type[Calibrator]] = Registry("calibrator", Calibrator, ENTRY_POINT_GROUP)


def register(cls: type[Calibrator]) -> type[Calibrator]:
    """Class decorator: make a built-in calibrator available under `cls.name`."""
    return _registry.register(cls)


def reload_plugins() -> None:
    """Forget discovered entry points; the next registry query scans them again."""
    _registry.reload_plugins()


def available_calibrators() -> list[str]:
    """Sorted names of built-in and installed third-party calibrators."""
    return _registry.names()


def calibrator_class(name: str) -> type[Calibrator]:
    """The class registered under `name`; imports a plugin on first use."""
    return _registry.get(name)


def params_for(name: str, params: dict) -> dict:
    """The subset of command-line calibrator parameters that `name` accepts (--percentile applies
    to the percentile calibrator only)."""
    accepted = calibrator_class(name).defaults
    return {k: v for k, v in params.items() if k in accepted}


def get_calibrator(name: str, stats: TensorStatistics | None = None, **params: Any) -> Calibrator:
    """A new calibrator `name` reading `stats` (a fresh TensorStatistics when None)."""
    return calibrator_class(name)(stats, **params)


def check_params(params: dict, calibrators: Sequence[str]) -> None:
    """Each calibrator used constructed with its own parameters (unknown names and bad values fail
    here, naming what is accepted), and each parameter (--percentile) range-checked by the
    calibrator that declares it and refused when none of `calibrators` takes it: `params_for`
    hands each calibrator only its own parameters, so `--percentile 101` with minmax used to be
    accepted and ignored. compare passes its several calibrators: --percentile is fine there when
    one of them takes it."""
    for name in calibrators:
        calibrator_class(name)(None, **params_for(name, params))
    for key, value in params.items():
        users = [name for name in calibrators if key in calibrator_class(name).defaults]
        owners = users or [name for name in available_calibrators() if key in _defaults_of(name)]
        if owners:
            calibrator_class(owners[0])(None, **{key: value})   # its own check: (0, 100] for a percentile
        if not users:
            takes = f"only the {', '.join(owners)} calibrator takes it" if owners else "no calibrator takes it"
            raise CalibError(f"--{key.replace('_', '-')} {value} has no effect with {', '.join(calibrators)}: {takes}")


def _defaults_of(name: str) -> dict:
    """The parameters calibrator `name` takes; none for a plug-in that cannot be loaded (the
    calibrators a command uses are loaded, and fail, on their own)."""
    try:
        return dict(calibrator_class(name).defaults)
    except CalibError:
        return {}
