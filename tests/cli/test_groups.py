"""calib.cli.groups: each group declares its options once and builds its part of the RunConfig;
`with_groups` puts a group's options where the command names it; a command with no options given
runs on RunConfig's own defaults (the one place they are declared)."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Optional

import pytest
import typer
from typer.testing import CliRunner

from calib.cli import app, defaults, groups
from calib.cli.groups import (BatchArgs, BudgetArgs, CalibratorArgs, DataArgs, DeviceArgs, Group, LabelArgs, ModelArgs,
                              OutputArgs, QuantizeArgs, ReportArgs, opt, run_config, with_groups)
from calib.session import RunConfig

GROUPS = [g for g in vars(groups).values() if isinstance(g, type) and issubclass(g, Group) and g is not Group]
CONFIG_GROUPS = [ModelArgs, DataArgs, CalibratorArgs, QuantizeArgs, BatchArgs, OutputArgs, DeviceArgs, BudgetArgs,
                 ReportArgs]
FIELDS = {f.name for f in dataclasses.fields(RunConfig)}


def flags(option: groups.Opt) -> list[str]:
    decls = [option.info.default, *(option.info.param_decls or ())]   # typer keeps the first name in .default
    return [d for decl in decls if isinstance(decl, str) for d in decl.split("/")]


def test_every_group_declares_its_options_with_help_and_a_type():
    for g in GROUPS:
        assert g.options, g
        assert g.__doc__, f"{g.__name__} says what it is for"
        for name, option in g.options.items():
            assert option.type is not None and option.info.help, (g.__name__, name)
            assert any(f.startswith("--") for f in flags(option)), (g.__name__, name)
        assert [p.name for p in g().parameters()] == list(g.options)


def test_no_flag_is_declared_by_two_groups():
    seen = {}
    for g in GROUPS:
        for name, option in g.options.items():
            for flag in flags(option):
                assert flag not in seen, f"{flag}: {g.__name__} and {seen[flag]}"
                seen[flag] = g.__name__


def test_a_group_option_for_a_runconfig_field_takes_its_default_from_runconfig():
    """One default per option: an option that fills a RunConfig field never restates its value."""
    for g in CONFIG_GROUPS:
        for name, option in g.options.items():
            if name in FIELDS:
                assert option.default == defaults.config(), f"{g.__name__}.{name} restates RunConfig's default"
                param = option.parameter(name)
                assert param.default == RunConfig.__dataclass_fields__[name].default, name


@pytest.mark.parametrize("group, values, part", [
    (ModelArgs(), {"model": "m.onnx", "task": "detect", "preprocess": "torchvision", "input_size": "256",
                   "input_shape": ("input_ids=16",), "mean": "0.5,0.5,0.5", "std": None, "channel_order": "bgr"},
     {"model": "m.onnx", "task": "detect", "preprocess": "torchvision", "input_size": "256",
      "input_shape": ("input_ids=16",), "mean": "0.5,0.5,0.5", "std": None, "channel_order": "bgr"}),
    (ModelArgs.without("mean", "std", "channel_order"),
     {"model": "m.onnx", "task": "detect", "preprocess": "torchvision", "input_size": "256", "input_shape": ()},
     {"model": "m.onnx", "task": "detect", "preprocess": "torchvision", "input_size": "256", "input_shape": ()}),
    (LabelArgs(), {"labels": "instances.json", "decoder": "ultralytics", "decoder_params": ("transposed=true",)},
     {"labels": "instances.json", "decoder": "ultralytics", "decoder_params": ("transposed=true",)}),
    (CalibratorArgs(), {"calibrator": "percentile", "percentile": 99.9, "recalibrate": True},
     {"calibrator": "percentile", "calibrator_params": {"percentile": 99.9}, "recalibrate": True}),
    (CalibratorArgs(), {"calibrator": "minmax", "percentile": None, "recalibrate": False},
     {"calibrator": "minmax", "calibrator_params": {}, "recalibrate": False}),
    (CalibratorArgs.without("calibrator"), {"percentile": None, "recalibrate": False},
     {"calibrator_params": {}, "recalibrate": False}),
    (DataArgs.without("eval_data_dir", "eval_samples"),
     {"dataset": "demo", "data_dir": None, "samples": 7, "seed": 3, "workers": 0},
     {"dataset": "demo", "data_dir": None, "samples": 7, "seed": 3, "workers": 0}),
    (BatchArgs("calib_batch_size"), {"calib_batch_size": 8}, {"calib_batch_size": 8}),
    (BudgetArgs(), {"max_drop": 0.01, "min_agreement": None}, {"max_drop": 0.01, "min_agreement": None}),
])
def test_each_group_builds_its_part_of_the_runconfig(group, values, part):
    parsed = group.parse(values)
    assert parsed.config() == part
    for name, value in values.items():
        assert getattr(parsed, name) == value
    assert not hasattr(group, next(iter(values)))   # the declaration itself holds no values
    config = run_config(parsed)
    for name, value in part.items():
        assert getattr(config, name) == value
    untouched = FIELDS - set(part)
    assert all(getattr(config, f) == getattr(RunConfig(), f) for f in untouched)


def test_a_selection_names_existing_options_only():
    with pytest.raises(ValueError, match="no option"):
        DataArgs("sample")
    with pytest.raises(ValueError, match="no option"):
        DataArgs.without("sample")
    with pytest.raises(ValueError):
        BudgetArgs.without("max_drop", "min_agreement")
    assert DataArgs("seed", "samples").names == ("samples", "seed")   # the group's order


def test_run_config_refuses_a_field_given_twice():
    model = ModelArgs("model", "task", "preprocess", "input_size", "input_shape").parse(
        {"model": "a", "task": "auto", "preprocess": None, "input_size": None, "input_shape": ()})
    with pytest.raises(TypeError, match="model"):
        run_config(model, model=None)


def test_with_groups_expands_groups_in_place_and_hands_over_parsed_groups():
    seen = {}

    toy = typer.Typer()

    @toy.command()
    @with_groups
    def cmd(*, first: Optional[str] = opt("--first", default=None, help="own option"),
            budget: BudgetArgs, data: DataArgs = DataArgs("samples"),
            last: int = opt("--last", default=5, help="own option")) -> None:
        seen.update(budget=budget, data=data, first=first, last=last)

    assert list(inspect.signature(cmd).parameters) == ["first", "max_drop", "min_agreement", "samples", "last"]
    result = CliRunner().invoke(toy, ["--max-drop", "0.5", "--samples", "9"])
    assert result.exit_code == 0, result.output
    assert isinstance(seen["budget"], BudgetArgs) and seen["budget"].max_drop == 0.5
    assert seen["budget"].min_agreement is None and seen["data"].samples == 9
    assert seen["first"] is None and seen["last"] == 5
    assert set(cmd.options) == {"first", "max_drop", "min_agreement", "samples", "last"}


def test_with_groups_refuses_an_option_declared_twice_and_a_positional_group():
    def twice(*, data: DataArgs, samples: int = opt("--samples", default=1, help="x")) -> None: ...

    with pytest.raises(TypeError, match="declared twice"):
        with_groups(twice)

    def positional(data: DataArgs) -> None: ...

    with pytest.raises(TypeError, match="keyword-only"):
        with_groups(positional)


def test_an_option_name_may_not_shadow_a_group_attribute():
    with pytest.raises(TypeError, match="shadow"):
        class Bad(Group):
            options = {"config": opt(int, "--config", default=0, help="x")}


class Captured(Exception):
    pass


def capture(monkeypatch, module: str, function: str):
    """Replace `module.function` by one that raises Captured with its arguments."""
    import importlib

    def fake(*args, **kwargs):
        raise Captured(args, kwargs)

    monkeypatch.setattr(importlib.import_module(module), function, fake)


def invoke(*args):
    result = CliRunner().invoke(app, list(args))
    assert isinstance(result.exception, Captured), result.output
    return result.exception.args


@pytest.mark.parametrize("command, module, function", [
    ("run", "calib.commands.run", "run"),
    ("compare", "calib.commands.compare", "compare_calibrators"),
    ("sensitivity", "calib.commands.sensitivity", "rank_sensitivity"),
    ("calibrate", "calib.commands.calibrate", "calibrate_only"),
])
def test_a_command_given_no_options_runs_on_runconfigs_defaults(monkeypatch, command, module, function):
    capture(monkeypatch, module, function)
    (config, *_), _ = invoke(command)
    assert config == RunConfig()


def test_options_reach_the_runconfig(monkeypatch):
    capture(monkeypatch, "calib.commands.run", "run")
    (config,), _ = invoke("run", "--samples", "7", "--percentile", "99.9", "--no-bias-correction", "--seed", "3",
                          "--device", "auto", "--max-drop", "0.01", "--no-html", "--out", "r", "--cache-dir", "c")
    assert config == RunConfig(samples=7, calibrator_params={"percentile": 99.9}, bias_correction=False, seed=3,
                               device="auto", max_drop=0.01, html=False, out="r", cache_dir="c")


def test_compare_and_sensitivity_pass_their_own_options(monkeypatch):
    capture(monkeypatch, "calib.commands.compare", "compare_calibrators")
    (config, names, out), kwargs = invoke("compare", "--calibrators", "minmax,mse", "--out", "o", "--sqnr-images", "3")
    assert names == ["minmax", "mse"] and out == "o" and kwargs == {"chosen": None, "sqnr_images": 3}
    capture(monkeypatch, "calib.commands.sensitivity", "rank_sensitivity")
    (config, out), kwargs = invoke("sensitivity", "--images", "5", "--weighted-only")
    assert out is None and kwargs == {"images": 5, "weighted_only": True} and config == RunConfig()


def test_build_and_bench_build_their_config_from_the_same_groups(monkeypatch):
    capture(monkeypatch, "calib.commands.build", "build")
    (config, cache, out), kwargs = invoke("build", "--cache", "c.cache", "--out", "m.onnx", "--no-bias-correction",
                                          "--min-batch", "2")
    assert config == RunConfig(bias_correction=False) and (cache, out) == ("c.cache", "m.onnx")
    assert kwargs == {"force": False, "overwrite": False, "min_batch": 2, "opt_batch": None, "max_batch": None,
                      "workspace_mib": None, "timing_cache": None, "compute_capability": None}
    capture(monkeypatch, "calib.commands.bench", "bench")
    (config, sizes, seconds, precision, timing_cache), _ = invoke("bench", "--batch-sizes", "1,8", "--device", "auto")
    assert config == RunConfig(device="auto") and sizes == [1, 8] and seconds == 3.0
    assert precision is None and timing_cache is None


def test_chosen_help_says_the_choice_is_by_logits_sqnr():
    """Issue 22: the help said "best agreement" while compare picks the highest logits SQNR."""
    from typer.testing import CliRunner

    from calib.cli import app

    text = " ".join(CliRunner().invoke(app, ["compare", "--help"]).output.split())
    chosen = text[text.index("--chosen"):]
    chosen = chosen[:chosen.index(" --", 1)]
    assert "logits SQNR" in chosen and "agreement" not in chosen, chosen


def command_options():
    """(command words, flag, declared type, click parameter) of every option of every command."""
    import typer.main

    def walk(command, words):
        for name, sub in getattr(command, "commands", {}).items():
            yield from walk(sub, [*words, name])
        if not hasattr(command, "commands"):
            for param in command.params:
                flag = next((o for o in getattr(param, "opts", ()) if o.startswith("--")), None)
                kind = getattr(getattr(param, "type_descriptor", None), "annotation", None)
                if flag and flag != "--help":
                    yield words, flag, kind, param

    yield from walk(typer.main.get_command(app), [])


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e400"])
def test_every_float_option_refuses_a_value_that_is_not_finite(value):
    """Issue 22 row 3: `--speed-seconds inf` hung after the evaluation. The groups guard every float
    option (Opt.parameter), so an option added later is guarded too."""
    floats = [(words, flag) for words, flag, kind, _ in command_options() if groups.is_float(kind)]
    assert len(floats) >= 5   # --percentile, --max-drop, --min-agreement, --speed-seconds, --seconds, ...
    for words, flag in floats:
        result = CliRunner().invoke(app, [*words, f"{flag}={value}"])
        assert result.exit_code == 2, (words, flag, result.output)
        assert f"'{flag}'" in result.output, (words, flag, result.output)


def test_every_count_and_seed_option_has_a_lower_bound():
    """Issue 22 row 3: `--seed -1` ended in numpy's ValueError. Every int option is a count, a size
    or a seed: each declares its lower bound where it is parsed."""
    ints = [(words, flag, param) for words, flag, kind, param in command_options()
            if kind is int or kind == Optional[int]]
    assert any(flag == "--seed" for _, flag, _ in ints)
    unbounded = [(" ".join(words), flag) for words, flag, param in ints if getattr(param, "min", None) is None]
    assert not unbounded
    result = CliRunner().invoke(app, ["run", "--seed", "-1"])
    assert result.exit_code == 2 and "--seed" in result.output
