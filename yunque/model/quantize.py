"""Int8 weight-only quantization for CPU decoding.

Decoding one token reads every weight once, so on a CPU it is bound by memory bandwidth:
int8 weights (one float scale per output channel) read a quarter of the bytes of float32.
The matmul is PyTorch's `_weight_int8pack_mm`, which multiplies bfloat16 activations by
int8 weights and applies the scales inside the kernel, so no float copy of a weight is
ever materialised. Embeddings stay in float (a lookup reads one row, not the table).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Int8Linear(nn.Module):
    """A linear layer with int8 weights and a per-output-channel scale: W ≈ scale[:, None] * q."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        w = linear.weight.detach().float()
        scale = w.abs().amax(dim=1).clamp(min=1e-8) / 127.0
        self.register_buffer("qweight", torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale.to(torch.bfloat16))
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, self.in_features)
        if x.device.type == "cpu":
            y = torch._weight_int8pack_mm(flat.to(torch.bfloat16), self.qweight, self.scale)
        else:  # no fused kernel here: dequantize on the fly (saves memory, not time)
            y = F.linear(flat.to(torch.bfloat16), self.qweight.to(torch.bfloat16)) * self.scale
        y = y.to(x.dtype).view(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, int8"


def quantize_int8(model: nn.Module) -> nn.Module:
    """Replace every `nn.Linear` of `model` (LM head included) by an `Int8Linear`, in place; returns it.

    A tied LM head gets its own int8 copy, so the embedding table stays exact. For inference only.
    """
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                setattr(module, child_name, Int8Linear(child))
    return model.eval()
