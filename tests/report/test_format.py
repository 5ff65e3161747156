"""The wording every rendering of a report shares (issue 22): plurals, points without a negative
zero, changes in words, and file names that are not UTF-8 made printable."""

import json
import os

from calib.report.format import change, images, points, printable
from calib.report.schema import EvalSection, as_json


def test_counts_points_and_changes_read_as_words():
    assert images(1) == "1 image" and images(0) == "0 images" and images(2) == "2 images"
    assert points(-0.00001) == "0.00" and points(-0.0) == "0.00" and points(-0.0123) == "-1.23"
    assert change(0.004) == "unchanged" and change(-0.004) == "unchanged"   # not "-0%"
    assert change(0.031) == "3% lower" and change(-0.05) == "5% higher"     # not "--5%"
    assert change(0.0312, 1, "faster", "slower") == "3.1% slower"


def test_names_that_are_not_utf8_are_shown_with_their_bytes_escaped():
    name = os.fsdecode(b"/data/bad_\xff\xfe.JPEG")        # what os.listdir gives for such a file
    shown = printable(name)
    assert shown == "/data/bad_\\xff\\xfe.JPEG" and shown.encode("utf-8")
    assert printable("caf\u00e9") == "caf\u00e9"             # real UTF-8 is left alone
    ev = EvalSection(samples=1, skipped=1, skipped_files=[name], disjoint_from_calibration=True, overlap={},
                     overlap_text="", unlabeled=0, seconds=0.0)
    text = json.dumps(ev.to_json(), ensure_ascii=False)       # the typed reports are printable...
    assert "bad_\\\\xff\\\\xfe.JPEG" in text and text.encode("utf-8")
    assert as_json({"notes": [name]})["notes"] == [shown]     # ...and so is a report read back as a dict
