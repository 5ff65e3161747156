"""The session of a command: its configuration and checks (`config`) and what it sets up from them
(`context`). Commands (`calib.commands.*`) build on this; nothing here knows about any one command.

Names are loaded on first use: `calib --help` reads option defaults from `calib.session.config`
without importing onnx through `setup`."""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {name: "calib.session.config" for name in ("GPU_DECODERS", "RunConfig", "check_config",
                                                  "default_out")}
_WHERE.update({name: "calib.session.context" for name in ("RunSetup", "check_model_classes", "default_flavor",
                                                       "report_header", "setup")})
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'calib.session' has no attribute '{name}'")
    return getattr(importlib.import_module(_WHERE[name]), name)
