"""calib.data.classes: the classes a dataset's labels name, its own or ImageNet's."""

from types import SimpleNamespace

from calib.data.classes import class_count, class_name, class_names_of


def test_a_dataset_with_its_own_names_counts_and_names_them():
    dataset = SimpleNamespace(source=SimpleNamespace(class_names=["cat", "dog", "fox"]))
    assert class_count(dataset) == 3
    assert class_names_of(dataset)(2) == "fox"


def test_a_dataset_without_names_counts_imagenets_classes():
    dataset = SimpleNamespace(source=SimpleNamespace())
    assert class_count(dataset) == 1000
    assert class_names_of(dataset)(1) == class_name(1)
