"""calib: INT8 calibration and quantization workbench.

Pipeline, one direction of dependency:
data -> calibrators -> cache -> quantize -> backends -> evaluate -> report -> cli.
"""

__version__ = "0.1.0"
