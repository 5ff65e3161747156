"""calib.placement: --device parsed once into a value the passes and runners ask."""

import pytest

from calib.errors import CalibError
from calib.placement import CPU, Placement


def test_a_placement_is_parsed_once():
    assert Placement.parse("cpu").devices == ("cpu",) and not Placement.parse("").on_gpu
    assert Placement.parse("cuda").devices == ("cuda:0",)
    assert Placement.parse("cuda:1").devices == ("cuda:1",) and not Placement.parse("cuda:1").several
    two = Placement.parse("cuda:0,1")
    assert two.devices == ("cuda:0", "cuda:1") and two.several and str(two) == "cuda:0,cuda:1"
    assert two.first == "cuda:0"
    for bad in ("gpu", "cuda:0,0", "cuda:a", "cuda:-1"):
        with pytest.raises(CalibError):
            Placement.parse(bad)


def test_the_cpu_is_the_default():
    assert Placement.parse(None) == CPU == Placement() and str(CPU) == "cpu" and CPU.first == "cpu"
