"""The session of a command: its configuration and checks (`config`) and what it sets up from them
(`setup`). Commands (`calib.commands.*`) build on this; nothing here knows about any one command."""

from calib.session.config import (GPU_DECODERS, RunConfig, check_config, check_placement, default_out,
                                  resolve_placement)
from calib.session.setup import (RunSetup, bias_means, check_model_classes, class_names_of, default_flavor,
                                 report_header, setup)

__all__ = ["GPU_DECODERS", "RunConfig", "RunSetup", "bias_means", "check_config", "check_model_classes",
           "check_placement", "class_names_of", "default_flavor", "default_out", "report_header",
           "resolve_placement", "setup"]
