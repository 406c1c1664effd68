"""Numeric precision a model runs at: float32 (the default, the scores every pin and figure is of) or
int8, where the encoder's linear layers run on int8 weights and activations (the teacher's transformer
is mostly those matrix products: measured about 1.5x its float32 throughput on 2 CPU cores).

Weights are quantised per output channel (symmetric int8); activations are quantised dynamically,
each window with its own scale, so a window's scores do not depend on the windows it is batched with
(torch's stock dynamic quantisation takes one scale per batch). With fbgemm's reduced range the integer
products cannot saturate, so the int8 arithmetic is exact on every x86-64 CPU; only the float parts
around it vary as they do in float32. CPU only: these are torch's fbgemm kernels.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

# the precision names are torch-free (the engine labels rows before torch loads); re-exported here
from haaqicli.util.devices import DEFAULT_PRECISION, PRECISIONS, check_precision, model_label  # noqa: F401
from haaqicli.util.errors import ModelError


class Int8Linear(nn.Module):
    """A frozen nn.Linear on int8: per-output-channel weights, activations quantised per leading index
    (one window of a (windows, frames, features) batch) with fbgemm's reduced range."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach().float().cpu()
        scale = (weight.abs().amax(dim=1) / 127.0).clamp_min(1e-12).double()
        qweight = torch.quantize_per_channel(weight, scale, torch.zeros(len(scale), dtype=torch.long), 0, torch.qint8)
        bias = None if linear.bias is None else linear.bias.detach().float().cpu()
        self.packed = torch.ops.quantized.linear_prepack(qweight, bias)
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 3:  # one window
            return torch.ops.quantized.linear_dynamic(x.contiguous(), self.packed, True)
        return torch.stack([torch.ops.quantized.linear_dynamic(part.contiguous(), self.packed, True)
                            for part in x.unbind(0)])

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def _replace_linear(module: nn.Module) -> int:
    count = 0
    for name, child in module.named_children():
        if isinstance(child, nn.Linear):
            setattr(module, name, Int8Linear(child))
            count += 1
        else:
            count += _replace_linear(child)
    return count


def quantize_encoder(model: nn.Module) -> nn.Module:
    """`model` (eval mode, on the CPU) with every linear layer of its encoder on int8, in place. The
    head stays float32: its inputs are one row per window, where the per-window loop would cost more
    than it saves."""
    encoder = getattr(model, "encoder", None)
    if encoder is None:
        raise ModelError(f"{type(model).__name__}: no encoder to run at int8")
    if any(p.device.type != "cpu" for p in model.parameters()):
        raise ModelError("--precision int8 runs on the CPU only (use --device cpu)")
    if not _replace_linear(encoder):
        raise ModelError(f"{type(model).__name__}: its encoder has no linear layers to run at int8")
    return model.eval()
