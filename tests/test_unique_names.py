"""Test modules share one namespace (tests/ has no __init__.py files, as pytest's default rootdir
import mode expects): two files of the same name in different folders stop the whole collection
with 'import file mismatch'. Each file is named after the module it tests, prefixed by its
package where a name would repeat (tests/metrics/test_metrics_registry.py)."""

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def test_every_test_file_name_is_unique():
    names = Counter(p.name for p in TESTS.rglob("test_*.py"))
    assert not [n for n, c in names.items() if c > 1]
