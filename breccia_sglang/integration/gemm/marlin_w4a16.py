"""INT4 and NVFP4 on SGLang's Marlin W4A16 kernels (JIT CUDA, sm_80+), converted once after loading.

Both load the 4-bit parameters every 4-bit kernel loads (``code_params``: packed codes, even
element in the low nibble, one scale, and zero point, per row and group), then hand the layer
to SGLang's own Marlin preparation and GEMM, as SGLang's AWQ and ModelOpt checkpoints get them:

- INT4, all three recipes -> AWQ-Marlin (``scalar_types.uint4`` with zero points). The packed
  weight becomes AWQ's layout (``weights.sglang_layouts.to_awq``: moved bits, each recipe's
  (u, z); exact but for the scale cast to the activation dtype, which Marlin multiplies in),
  then SGLang's ``AWQMarlinLinearKernel`` repacks it for Marlin and runs it. One path for the
  three recipes: symmetric signed INT4 is u = code ^ 8 with z = 8.
- NVFP4 -> FP4 Marlin (``prepare_nvfp4_layer_for_marlin`` / ``apply_fp4_marlin_linear``): our
  packed weight is ModelOpt's ``weight`` as it is and the E4M3 scale bytes its
  ``weight_scale`` (``to_modelopt_nvfp4``), with a global scale of 1.0 (breccia has none).
  SGLang pads shards to Marlin's tiles itself. Only for fp16 activations: reading SGLang's
  ``dequant.h`` after ``nvfp4_marlin_process_scales``, a subnormal E4M3 scale (codes 1..7)
  decodes 2^-112 too small in bf16, and breccia floors NVFP4 scales at 2^-9, a subnormal, so
  they are common. bf16 NVFP4 layers take our Triton W4A16 kernel until a GPU shows otherwise.

Which layers Marlin takes is SGLang's own rule (``check_marlin_supported``: groups 32/64/128
for INT4, 16 for FP4; ``check_marlin_supports_shape``: N % 64, K % 128), asked for the
described GPU; the rest take our Triton W4A16 kernel (``triton_w4a16.py``).

Not yet run on a GPU by this project: the layouts are checked on CPU against SGLang's own AWQ
dequantize and ModelOpt NVFP4 dequantize (``tests/weights``), and this module's conversion
against the same (``tests/integration/test_gemm_marlin.py``); Marlin's repack and GEMM need
SGLang's CUDA kernels.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from ... import names
from ...weights.sglang_layouts import to_awq, to_modelopt_nvfp4
from ..sglang_params import code_params, replace_param, stored_weight
from .base import GemmKernel, needs_gpu
from .marlin_rules import MIN_CAPABILITY, marlin_refusal, scalar_types

NVFP4_GROUP = 16  # K elements per E4M3 scale


class MarlinInt4Kernel(GemmKernel):
    """INT4 (symmetric signed / unsigned, asymmetric) on SGLang's AWQ-Marlin."""

    name = names.GEMM_MARLIN_INT4
    priority = 90

    @classmethod
    def why_not(cls, spec):
        if spec.recipe.name != "int4":
            return "needs an INT4 recipe"
        if spec.params_dtype not in (torch.float16, torch.bfloat16):
            return f"needs float16 or bfloat16 activations, not {spec.params_dtype}"
        return needs_gpu(spec, cls.name, MIN_CAPABILITY) or marlin_refusal(spec, scalar_types().uint4, True)

    def create_weights(self, layer, spec, weight_loader):
        self.recipe, self.group, self.params_dtype = spec.recipe, spec.block, spec.params_dtype
        code_params(layer, spec, weight_loader)

    def to_awq_params(self, layer) -> None:
        """The loaded packed weight as SGLang's AWQ parameters (``qweight``, ``qzeros``,
        ``scales`` and the sizes AWQ's scheme records), in place of ours."""
        w = stored_weight(layer)
        awq = to_awq(w.data, w.scale, w.zero_point, self.recipe, dtype=self.params_dtype, name=layer.breccia_prefix)
        n, k = w.data.shape[0], w.data.shape[1] * 2
        for ours in ("weight", "weight_scale", "weight_zero_point"):
            replace_param(layer, ours, None)
        replace_param(layer, "qweight", awq.qweight)
        replace_param(layer, "qzeros", awq.qzeros)
        replace_param(layer, "scales", awq.scales)
        layer.input_size_per_partition, layer.output_size_per_partition = k, n
        layer.num_groups = k // self.group

    def process_weights_after_loading(self, layer):
        from sglang.srt.hardware_backend.gpu.quantization.awq_kernels import AWQMarlinLinearKernel
        from sglang.srt.layers.quantization.awq.awq import AWQMarlinConfig

        self.to_awq_params(layer)
        config = AWQMarlinConfig(weight_bits=4, group_size=self.group, zero_point=True, lm_head_quantized=False,
                                 modules_to_not_convert=None, full_config={})
        self.marlin = AWQMarlinLinearKernel(config)
        self.marlin.process_weights_after_loading(layer)

    def apply(self, layer, x, bias):
        return self.marlin.apply(layer, x, bias)


class MarlinNvfp4Kernel(GemmKernel):
    """NVFP4 on SGLang's FP4 Marlin (W4A16), fp16 activations."""

    name = names.GEMM_MARLIN_NVFP4
    priority = 90

    @classmethod
    def why_not(cls, spec):
        if spec.recipe.name != "nvfp4":
            return "needs an NVFP4 recipe"
        if spec.params_dtype != torch.float16:
            return (f"needs float16 activations, not {spec.params_dtype}: in bf16 FP4 Marlin decodes "
                    "subnormal E4M3 scales (breccia's are often subnormal) wrongly")
        on_gpu = needs_gpu(spec, cls.name, MIN_CAPABILITY)
        if on_gpu:
            return on_gpu
        from sglang.srt.layers.quantization.marlin_utils import _check_marlin_supported

        ok, why = _check_marlin_supported(scalar_types().float4_e2m1f, spec.block, False,
                                          device_capability=spec.capability)
        return None if ok else f"SGLang's Marlin: {why}"  # any N and K: SGLang pads to Marlin's tiles

    def create_weights(self, layer, spec, weight_loader):
        self.params_dtype = spec.params_dtype
        code_params(layer, spec, weight_loader)

    def to_modelopt_params(self, layer) -> None:
        """The loaded weight as the parameters ``prepare_nvfp4_layer_for_marlin`` reads."""
        w = stored_weight(layer)
        fp4 = to_modelopt_nvfp4(w.data, w.scale, name=layer.breccia_prefix)
        replace_param(layer, "weight_scale", fp4.weight_scale)
        replace_param(layer, "weight_global_scale", fp4.weight_scale_2[:1])  # 1.0 for every shard alike
        layer.output_size_per_partition, layer.input_size_per_partition = w.data.shape[0], w.data.shape[1] * 2
        layer.params_dtype = self.params_dtype

    def process_weights_after_loading(self, layer):
        from sglang.srt.layers.quantization.marlin_utils_fp4 import prepare_nvfp4_layer_for_marlin

        self.to_modelopt_params(layer)
        # prepare reads ``layer.quant_config.group_size`` (SGLang's linear layers hold our
        # BrecciaConfig there, which has none) and would pad and Marlin-permute ``layer.bias``,
        # which apply_fp4_marlin_linear then adds to an output in natural order. Hand it the
        # group and no bias; apply adds the bias itself.
        quant_config, bias = getattr(layer, "quant_config", None), getattr(layer, "bias", None)
        layer.quant_config, layer.bias = SimpleNamespace(group_size=NVFP4_GROUP), None
        try:
            prepare_nvfp4_layer_for_marlin(layer)
        finally:
            layer.quant_config, layer.bias = quant_config, bias

    def apply(self, layer, x, bias):
        from sglang.srt.layers.quantization.marlin_utils_fp4 import apply_fp4_marlin_linear

        out = apply_fp4_marlin_linear(input=x, weight=layer.weight, weight_scale=layer.weight_scale,
                                      weight_global_scale=layer.weight_global_scale, workspace=layer.workspace,
                                      size_n=layer.output_size_per_partition, size_k=layer.input_size_per_partition)
        return out if bias is None else out.add_(bias)
