"""Backend presets: recipes that compute what each deployment target computes.

Training-time simulation must match the deployment backend, or the model
meets a second, unplanned error at deployment (seed 003 §3.1). Each preset
encodes one target's arithmetic:

======================  =====================================  ===================================
preset                  weights                                activations
======================  =====================================  ===================================
x86                     int8 per-channel sym, max              uint8 per-tensor asym, MSE histogram
x86-novnni              int8 per-channel sym, max              uint7 (0..127) per-tensor asym, MSE
arm                     int8 per-channel sym, max              uint8 per-tensor asym, MSE histogram
mnn                     int8 [-127, 127] per-channel sym, max  int8 [-127, 127] per-tensor sym, KL
tensorrt                int8 [-127, 127] per-channel sym, max  int8 per-tensor sym, entropy (KL)
onnxruntime / int8      int8 per-channel sym, max              int8 per-tensor asym, min-max
onnxruntime-u8s8        int8 per-channel sym, max              uint8 per-tensor asym, min-max
w8a8-dynamic            int8 per-channel sym, max              int8 per-token sym, dynamic
onnxruntime-dynamic     int8 per-channel sym, max              uint8 per-tensor asym, dynamic
w8                      int8 per-channel sym, max              float
w4-g128 / w4-g32        int4 groups of 128 / 32, sym, clipped  float
fp8                     fp8 e4m3fn per-channel, max            fp8 e4m3fn per-tensor, max
======================  =====================================  ===================================

Why these choices:

- x86 / arm follow PyTorch's default qconfigs (fbgemm / oneDNN / qnnpack):
  `PerChannelMinMaxObserver` qint8 symmetric weights and a `HistogramObserver`
  for quint8 affine activations; that observer picks the range minimising the
  L2 quantization error, i.e. ``method="mse"``. PyTorch's own qnnpack default
  keeps per-tensor weights; its kernels take per-channel ones, which are
  more accurate, so ``arm`` uses them.
- x86-novnni: on CPUs without AVX512-VNNI, the u8 x s8 multiply (VPMADDUBSW) adds
  pairs into int16 and can saturate; PyTorch's ``reduce_range`` keeps
  activations to 7 bits (seed 003 §3.1).
- mnn: MNN's quantization tool defaults to MAX_ABS weights, KL features and
  clamps both to +-127 (``weight_clamp_value`` / ``feature_clamp_value``), and its
  C++ kernels round half away from zero (seed 003 §3.4).
- tensorrt: symmetric only (zero point 0); weights in [-127, 127] with
  scale = max|w| / 127 per output channel; activations in [-128, 127] from the
  entropy calibrator (IInt8EntropyCalibrator2); round half to even.
- onnxruntime: ORT's documentation names S8S8 with QDQ "the default setting" and
  "the first choice"; `quantize_static` defaults to symmetric weights,
  asymmetric activations (``ActivationSymmetric=False``) and MinMax calibration.
  U8S8 is the alternative when S8S8 loses accuracy. ``int8`` is this recipe:
  lowbit's export target is ONNX QDQ run in ONNX Runtime.
- w8a8-dynamic: SmoothQuant-style int8 GEMMs of LLM servers (vLLM, TensorRT-LLM):
  one scale per token computed at run time, so no calibration.
- onnxruntime-dynamic: ONNX Runtime's ``quantize_dynamic``: one uint8 scale per
  tensor, computed at run time by DynamicQuantizeLinear, which ONNX Runtime fuses
  with the int8 MatMul (DynamicQuantizeMatMul). Faster there than per-token
  scales (which need explicit reductions in the graph), a little less accurate.
- w8 / w4-g*: weight-only LLM formats (int8 per channel; AWQ / GPTQ-style int4
  groups along the input dimension with an MSE clipping search). int4 and fp8
  presets quantize Linear and Conv only: embeddings stay in float, as those
  toolchains leave them.
- fp8: Hopper / Ada FP8 (TensorRT, TensorRT-LLM, vLLM): e4m3 with per-tensor
  static activation scales from the calibration maximum.

Channel and group axes are left to the layer (``axis=None``): output channels for
``"channel"`` (axis 1 for ConvTranspose), input channels for ``"group"``.
"""

from __future__ import annotations

from lowbit.recipes.recipe import Recipe
from lowbit.recipes.spec import QuantSpec, RecipeError

LINEAR_CONV = ("Linear", "Conv1d", "Conv2d", "Conv3d")

_W_INT8 = QuantSpec("int8", "channel")
_U8_MSE = QuantSpec("uint8", symmetric=False, observer="histogram", method="mse")


def _w4(group_size: int) -> Recipe:
    return Recipe(
        name=f"w4-g{group_size}", mode="weight_only",
        weight=QuantSpec("int4", "group", group_size=group_size, clip_search=True),
        module_types=LINEAR_CONV, calibration_batches=0,
        description=f"int4 weight-only, symmetric groups of {group_size} with clipping search "
                    "(AWQ / GPTQ-style kernels: llama.cpp, vLLM, TensorRT-LLM, ORT MatMulNBits)",
    )


_ONNXRUNTIME = Recipe(
    name="onnxruntime", backend="onnxruntime",
    weight=_W_INT8, input=QuantSpec("int8", symmetric=False),
    description="ONNX Runtime QDQ S8S8 (its recommended default): int8 per-channel symmetric "
                "weights, int8 per-tensor asymmetric activations, min-max calibration",
)

PRESETS: dict[str, Recipe] = {
    "x86": Recipe(
        name="x86", backend="x86", weight=_W_INT8, input=_U8_MSE,
        description="PyTorch x86 CPU (fbgemm / oneDNN, VNNI): int8 per-channel symmetric "
                    "weights, uint8 per-tensor asymmetric activations",
    ),
    "x86-novnni": Recipe(
        name="x86-novnni", backend="x86", weight=_W_INT8, input=_U8_MSE.with_(format="uint7"),
        description="PyTorch x86 CPU without AVX512-VNNI: as x86 with 7-bit activations "
                    "(reduce_range) so u8 x s8 products cannot saturate",
    ),
    "arm": Recipe(
        name="arm", backend="qnnpack", weight=_W_INT8, input=_U8_MSE,
        description="PyTorch ARM CPU (qnnpack / XNNPACK): int8 per-channel symmetric weights, "
                    "uint8 per-tensor asymmetric activations",
    ),
    "mnn": Recipe(
        name="mnn", backend="mnn",
        weight=QuantSpec("int8_narrow", "channel", rounding="half_away"),
        input=QuantSpec("int8_narrow", observer="histogram", method="entropy",
                        rounding="half_away"),
        description="Alibaba MNN: int8 per-channel symmetric weights, int8 per-tensor symmetric "
                    "KL activations, both clamped to +-127, round half away from zero",
    ),
    "tensorrt": Recipe(
        name="tensorrt", backend="tensorrt",
        weight=QuantSpec("int8_narrow", "channel"),
        input=QuantSpec("int8", observer="histogram", method="entropy"),
        description="NVIDIA TensorRT int8: symmetric, no zero points; per-channel max weights "
                    "in [-127, 127], per-tensor entropy-calibrated activations",
    ),
    "onnxruntime": _ONNXRUNTIME,
    "onnxruntime-u8s8": _ONNXRUNTIME.with_(
        name="onnxruntime-u8s8", input=QuantSpec("uint8", symmetric=False),
        description="ONNX Runtime QDQ U8S8: int8 per-channel symmetric weights, uint8 per-tensor "
                    "asymmetric activations (try when S8S8 loses accuracy)",
    ),
    "int8": _ONNXRUNTIME.with_(
        name="int8",
        description="General int8 default, the same as 'onnxruntime' (QDQ S8S8, the format "
                    "lowbit exports and ONNX Runtime runs)",
    ),
    "w8a8-dynamic": Recipe(
        name="w8a8-dynamic", mode="dynamic", weight=_W_INT8,
        input=QuantSpec("int8", "token", dynamic=True), calibration_batches=0,
        description="int8 GEMM with per-token dynamic activations (LLM servers: vLLM, "
                    "TensorRT-LLM, SmoothQuant-style W8A8); no calibration",
    ),
    "onnxruntime-dynamic": Recipe(
        name="onnxruntime-dynamic", mode="dynamic", weight=_W_INT8,
        input=QuantSpec("uint8", "tensor", symmetric=False, dynamic=True), calibration_batches=0,
        description="ONNX Runtime quantize_dynamic: int8 per-channel symmetric weights, uint8 "
                    "per-tensor asymmetric activations quantized at run time (fused "
                    "DynamicQuantizeMatMul); no calibration",
    ),
    "w8": Recipe(
        name="w8", mode="weight_only", weight=_W_INT8, calibration_batches=0,
        description="int8 per-channel symmetric weight-only (any runtime with int8 weight "
                    "storage: torchao, ORT MatMulNBits, TensorRT-LLM)",
    ),
    "w4-g128": _w4(128),
    "w4-g32": _w4(32),
    "fp8": Recipe(
        name="fp8", backend="tensorrt", module_types=LINEAR_CONV,
        weight=QuantSpec("fp8_e4m3fn", "channel"), input=QuantSpec("fp8_e4m3fn"),
        description="FP8 e4m3fn on Hopper / Ada GPUs (TensorRT, TensorRT-LLM, vLLM): "
                    "per-channel weights, static per-tensor activations",
    ),
}


def preset(name: str) -> Recipe:
    """The backend preset called ``name`` (case and ``_`` / ``-`` do not matter).

    Args:
        name: one of `PRESETS` (see `list_presets`).

    Returns:
        The frozen `Recipe`; change it with ``with_`` / ``with_rules``.

    Example:
        >>> preset("tensorrt").input.method
        'entropy'
    """
    key = str(name).strip().lower().replace("_", "-")
    if key not in PRESETS:
        raise RecipeError(f"unknown preset {name!r}; use one of {sorted(PRESETS)}")
    return PRESETS[key]


def list_presets() -> list[tuple[str, str]]:
    """``(name, description)`` of every preset, in `PRESETS` order.

    Example:
        >>> ("x86-novnni" in dict(list_presets()))
        True
    """
    return [(name, recipe.description) for name, recipe in PRESETS.items()]
