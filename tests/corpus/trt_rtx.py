"""TensorRT-RTX's ONNX parser and builder as the corpus tests and benchmarks call them: strongly
typed, ahead of time for SM 8.9 (no GPU needed), one optimization profile over the batch of every
input (1, 4, 8) with the other dimensions as the file fixes them."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping


@dataclass
class TrtBuild:
    parsed: bool
    errors: list[str]
    layers: Counter = field(default_factory=Counter)
    built: bool = False
    seconds: float = 0.0
    engine_bytes: int = 0

    def summary(self) -> str:
        """"ok", or the first line of what went wrong (for tables)."""
        if not self.parsed:
            return "parse failed: " + (self.errors[0].splitlines()[0] if self.errors else "no error message")
        return "ok" if self.built else "build failed"


class TrtRtx:
    """TensorRT-RTX's ONNX parser and builder, strongly typed, targeting SM 8.9 ahead of time."""

    def __init__(self, trt):
        self.trt = trt
        self.logger = trt.Logger(trt.Logger.ERROR)

    def build(self, path: Path, input_name: str, chw: tuple[int, int, int]) -> TrtBuild:
        return self.build_inputs(path, {input_name: chw})

    def build_inputs(self, path: Path, shapes: Mapping[str, tuple[int, ...]] | None = None) -> TrtBuild:
        """Parse and build `path`; `shapes`: each input's dimensions after the batch (default: as the
        file gives them), the batch axis dynamic from 1 to 8."""
        trt = self.trt
        builder = trt.Builder(self.logger)
        network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse_from_file(str(path)):
            return TrtBuild(False, [str(parser.get_error(i)) for i in range(parser.num_errors)])
        layers = Counter(network.get_layer(i).type.name for i in range(network.num_layers))
        config = builder.create_builder_config()
        config.num_compute_capabilities = 1
        config.set_compute_capability(trt.ComputeCapability.SM89, 0)
        profile = builder.create_optimization_profile()
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            rest = tuple((shapes or {}).get(tensor.name, tuple(tensor.shape)[1:]))
            profile.set_shape(tensor.name, (1, *rest), (4, *rest), (8, *rest))  # the batch axis stays dynamic
        config.add_optimization_profile(profile)
        start = time.perf_counter()
        engine = builder.build_serialized_network(network, config)
        seconds = time.perf_counter() - start
        return TrtBuild(True, [], layers, engine is not None, seconds, 0 if engine is None else engine.nbytes)
