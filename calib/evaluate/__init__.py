"""Evaluation: accuracy of several models on the same decoded images, and the statistics that
say how much of a difference is real."""

from calib.evaluate.accuracy import Evaluation, Predictions, evaluate, top5

__all__ = ["Evaluation", "Predictions", "evaluate", "top5"]
