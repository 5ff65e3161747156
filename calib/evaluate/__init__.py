"""Evaluation of models on a backend: artifacts built and loaded, run through the evaluation
pass (`calib.passes`), timed."""
