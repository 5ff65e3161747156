"""The report's wording rules (calib.report.format: plurals, points without a negative zero,
changes said as "lower"/"higher"), offered to the command line: the CLI imports only
calib.commands (tests/cli/test_thin.py), and its terminal lines must read as the reports do."""

from calib.report.format import change, images, points

__all__ = ["change", "images", "points"]
