"""The Open Inference Protocol's view of the served model, without HTTP: the three models' signatures (from the
manifest and the settings), their metadata and Triton configuration, a request checked against a signature, and a
request's image tensors turned into the data plane's `Images`.

Classifier and saliency take either `images`, BYTES [N] or [N, 1] of encoded images (any format /predict reads;
base64 strings when sent as JSON rather than binary), or `faces`, UINT8 [N, 1, H, W] at the model's input size.
The request parameter `faces` chooses how an encoded image's faces are found, as /predict's query does: `none`
(the default: each image is one face), `detect` or `auto`. Their outputs have a row per face, and `boxes` (INT32
[F, 4]: x, y, width, height in the image's upright pixels) and `image_index` (INT32 [F]: the input row each face
came from) say which face of which image each row is.
"""

from dataclasses import dataclass
from typing import get_args

import numpy as np

from schemas.api import FacesMode
from schemas.manifest import Manifest
from service import oip
from service.dataplane import Images, Uploaded, check_image_count, decode_base64
from service.oip import ProtocolError
from service.parameters import check_integer
from service.runtime.filters import DEFAULT_SIZE, DEFAULT_STEPS, SIZES, FilterMode
from service.settings import Settings

FACE_MODES = get_args(FacesMode)
PLATFORMS = {"torchscript": "pytorch_libtorch", "onnx": "onnxruntime_onnx"}  # Triton's names for the formats


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1: any size; the batch dimension comes first where the model batches
    optional: bool = False


@dataclass(frozen=True)
class ModelSpec:
    name: str
    kind: str  # classifier, saliency or filters
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int  # 0: the model does not batch


def model_specs(manifest: Manifest, settings: Settings) -> dict[str, ModelSpec]:
    height, width, side = manifest.input.height, manifest.input.width, manifest.preprocessing.resize_to
    classes, batch = len(manifest.classes), settings.max_images_per_request
    images = (TensorSpec("images", "BYTES", (-1, 1), optional=True),
              TensorSpec("faces", "UINT8", (-1, 1, height, width), optional=True))
    probabilities = TensorSpec("probabilities", "FP32", (-1, classes))
    faces = (TensorSpec("boxes", "INT32", (-1, 4)), TensorSpec("image_index", "INT32", (-1,)))
    specs = [
        ModelSpec(manifest.name, "classifier", images,
                  (probabilities, TensorSpec("label", "BYTES", (-1,)), *faces), batch),
        ModelSpec(f"{manifest.name}-saliency", "saliency", images,
                  (TensorSpec("saliency", "FP32", (-1, side, side)), TensorSpec("target", "INT32", (-1,)),
                   probabilities, *faces), batch),
        ModelSpec(f"{manifest.name}-filters", "filters",
                  (TensorSpec("layer", "BYTES", (1,)), TensorSpec("filters", "INT32", (-1,))),
                  (TensorSpec("images", "FP32", (-1, -1, -1)), TensorSpec("activations", "FP32", (-1,))), 0),
    ]
    return {spec.name: spec for spec in specs}


def find_model(manifest: Manifest, settings: Settings, name: str, version: str | None) -> ModelSpec:
    specs = model_specs(manifest, settings)
    if name not in specs:
        raise ProtocolError(f"unknown model {name!r}; served: {', '.join(specs)}", status=404)
    if version not in (None, "", manifest.version):
        raise ProtocolError(f"unknown version {version!r} of {name!r}; served: {manifest.version}", status=404)
    return specs[name]


def metadata(spec: ModelSpec, version: str, backend: str) -> dict:
    return {"name": spec.name, "versions": [version], "platform": PLATFORMS[backend],
            "inputs": [_metadata_tensor(t) for t in spec.inputs], "outputs": [_metadata_tensor(t) for t in spec.outputs]}


def _metadata_tensor(tensor: TensorSpec) -> dict:
    return {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}


def triton_config(spec: ModelSpec, manifest: Manifest, settings: Settings, backend: str, device: str) -> dict:
    """Triton's model configuration (as JSON): what perf_analyzer and Triton tooling read."""
    config = {
        "name": spec.name, "platform": PLATFORMS[backend], "max_batch_size": spec.max_batch_size,
        "input": [_config_tensor(t, spec.max_batch_size) for t in spec.inputs],
        "output": [_config_tensor(t, spec.max_batch_size) for t in spec.outputs],
        "version_policy": {"latest": {"num_versions": 1}},
        "instance_group": [{"name": spec.name, "count": 1, "kind": "KIND_GPU" if device.startswith("cuda") else "KIND_CPU"}],
        "parameters": {"labels": {"string_value": ",".join(manifest.classes)}},
    }
    if spec.kind == "classifier":  # requests share forward passes through the dynamic batcher
        config["dynamic_batching"] = {"max_queue_delay_microseconds": int(settings.batch_wait_ms * 1000),
                                      "default_queue_policy": {"max_queue_size": settings.queue_limit}}
    return config


def _config_tensor(tensor: TensorSpec, max_batch_size: int) -> dict:
    dims = list(tensor.shape[1:] if max_batch_size else tensor.shape)
    described = {"name": tensor.name, "data_type": "TYPE_STRING" if tensor.datatype == "BYTES"
                 else f"TYPE_{tensor.datatype}", "dims": dims or [1]}
    if not dims:  # Triton's way to write a scalar per batch row
        described["reshape"] = {"shape": []}
    if tensor.optional:
        described["optional"] = True
    return described


def check_inputs(spec: ModelSpec, request: oip.Request) -> None:
    expected = {t.name: t for t in spec.inputs}
    for tensor in request.inputs.values():
        if tensor.name not in expected:
            raise ProtocolError(f"unexpected input {tensor.name!r} for model {spec.name!r}; inputs: "
                                f"{', '.join(expected)}")
        if tensor.datatype != expected[tensor.name].datatype:
            raise ProtocolError(f"input {tensor.name!r} of model {spec.name!r} must be "
                                f"{expected[tensor.name].datatype}, got {tensor.datatype}")
    missing = [t.name for t in spec.inputs if not t.optional and t.name not in request.inputs]
    if missing:
        raise ProtocolError(f"model {spec.name!r} needs input(s) {', '.join(missing)}")


def wanted_outputs(spec: ModelSpec, request: oip.Request, classes: int) -> list[oip.Wanted]:
    names = [t.name for t in spec.outputs]
    if not request.outputs:
        return [oip.Wanted(name, request.binary_output) for name in names]
    for want in request.outputs:
        if want.name not in names:
            raise ProtocolError(f"unknown output {want.name!r} of model {spec.name!r}; outputs: {', '.join(names)}")
        if want.classification and want.name != "probabilities":
            raise ProtocolError(f"classification applies to `probabilities`, not to {want.name!r}")
        if want.classification and want.classification > classes:
            raise ProtocolError(f"classification {want.classification} asks for more than the {classes} classes")
    return request.outputs


def images_input(parsed: oip.Request, input_spec, max_images: int) -> Images:
    """`images` (decoded like /predict's uploads; each image whole, the protocol's one row per input, unless the
    parameter `faces` asks for detection) or `faces` (used as they are), checked against the model's input size and
    the image-count limit."""
    given = [name for name in ("images", "faces") if name in parsed.inputs]
    if len(given) != 1:
        raise ProtocolError("send exactly one of the inputs `images` (BYTES, encoded images) and `faces` "
                            f"(UINT8 [N, 1, H, W]); got {given or 'neither'}")
    tensor = parsed.inputs[given[0]]
    count = tensor.shape[0] if tensor.shape else 0
    check_image_count(count, max_images)
    faces = parsed.parameters.get("faces", "none")
    if faces not in FACE_MODES:
        raise ProtocolError(f"parameter 'faces' must be one of {', '.join(FACE_MODES)}, got {faces!r}")
    if tensor.name == "faces" and faces != "none":
        raise ProtocolError("the input `faces` holds face crops already: send `images` to have faces found")
    if tensor.name == "faces":
        expected = [count, 1, input_spec.height, input_spec.width]
        if tensor.shape != expected or count == 0:
            raise ProtocolError(f"`faces` must have shape [N, 1, {expected[2]}, {expected[3]}] with N >= 1, "
                                f"got {tensor.shape}")
        return Images(crops=tensor.data)
    if tensor.shape not in ([count], [count, 1]) or count == 0:
        raise ProtocolError(f"`images` must have shape [N] or [N, 1] with N >= 1, got {tensor.shape}")
    names = [f"images[{i}]" for i in range(count)]
    return Images([(name, data if tensor.binary else decode_base64(name, data))
                   for name, data in zip(names, tensor.data.reshape(-1))], faces=faces)


def face_outputs(uploaded: Uploaded) -> dict[str, np.ndarray]:
    """`boxes` and `image_index` of every face, in the order of the outputs' rows (crops sent as they are are
    each their own whole image)."""
    if not uploaded.photos:
        count, (height, width) = len(uploaded.crops), uploaded.crops.shape[-2:]
        return {"boxes": np.tile(np.array([0, 0, width, height], dtype=np.int32), (count, 1)),
                "image_index": np.arange(count, dtype=np.int32)}
    rows = [(face.box, index) for index, photo in enumerate(uploaded.photos) for face in photo.faces]
    return {"boxes": np.array([box for box, _ in rows], dtype=np.int32).reshape(-1, 4),
            "image_index": np.array([index for _, index in rows], dtype=np.int32)}


def filters_input(parsed: oip.Request) -> tuple[str, tuple[int, ...], str, int, int]:
    """The filters model's request: (layer, filter indices, mode, steps, size), checked by the data plane."""
    layer_tensor, filters_tensor = parsed.inputs["layer"], parsed.inputs["filters"]
    if layer_tensor.data.size != 1:
        raise ProtocolError(f"`layer` holds one layer name, got shape {layer_tensor.shape}")
    modes = get_args(FilterMode)
    mode = parsed.parameters.get("mode", modes[0])
    if mode not in modes:
        raise ProtocolError(f"unknown mode {mode!r}; expected one of {', '.join(modes)}")
    return (layer_tensor.data.reshape(-1)[0].decode(errors="replace"), tuple(int(i) for i in filters_tensor.data.reshape(-1)),
            mode, check_integer(parsed.parameters, "steps", DEFAULT_STEPS, 1),  # its limit: the plane's check
            check_integer(parsed.parameters, "size", DEFAULT_SIZE, *SIZES))
