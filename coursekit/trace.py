"""Looking inside a network: what each block receives, what it returns, what it holds and what it costs.

:func:`trace` runs one forward pass with a forward hook on every module that
``select`` picks and returns one :class:`TraceRow` per call, in the order the
calls happened::

    rows = trace(unet, x, t, context, select=lambda name, m: isinstance(m, ResBlock))
    show.table([r.cells() for r in rows], TraceRow.HEADERS)

Shapes are read from the tensors that really flow through the network, so the
table is right for any input size. The FLOPs column comes from
``torch.utils.flop_counter.FlopCounterMode`` (a multiply-add counts as 2 FLOPs).
That counter sees the operators torch dispatches; a fused kernel it has no
formula for (on the CPU: ``F.scaled_dot_product_attention``) counts as 0, so run
``trace`` inside ``diffusion_lib.attention.record_attention(model, "all")``,
which computes attention with explicit matrix products, to count attention too.
FLOPs are counted with ``diffusion_lib.layers.reference_kernels()``: the count is
the architecture's (every 3x3 convolution as a convolution), not that of the CPU
shortcuts for tiny maps.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from diffusion_lib.layers import reference_kernels

Selector = Callable[[str, nn.Module], bool]


def children_only(name: str, module: nn.Module) -> bool:
    """The default selector: the model's direct children (``conv_in``, ``mid_block``, ...)."""
    return "." not in name


@dataclass
class TraceRow:
    """One call of a traced module.

    :param name: the module's name inside the model (``down_blocks.2.1``)
    :param kind: its class name (``SpatialTransformer``)
    :param input_shape: shape of the first tensor argument, e.g. (B, C, H, W)
    :param other_inputs: the other tensor arguments as ``"name (shape)"`` (``"emb (1, 128)"``)
    :param output_shape: shape of the returned tensor
    :param params: parameters of the module, its children included
    :param flops: FLOPs of this call, its children included (0 if not counted)
    """

    HEADERS = ("#", "module", "type", "input", "also receives", "output", "params", "MFLOP")

    index: int
    name: str
    kind: str
    input_shape: tuple[int, ...] | None
    other_inputs: list[str] = field(default_factory=list)
    output_shape: tuple[int, ...] | None = None
    params: int = 0
    flops: int = 0

    def cells(self) -> list[Any]:
        """The row as table cells, in the order of :attr:`HEADERS`."""
        shape = lambda s: "" if s is None else str(tuple(s))  # noqa: E731
        return [self.index, self.name, self.kind, shape(self.input_shape), ", ".join(self.other_inputs),
                shape(self.output_shape), f"{self.params:,}", self.flops / 1e6]


def _argument_names(module: nn.Module) -> list[str]:
    try:
        return [p for p in inspect.signature(module.forward).parameters if p != "self"]
    except (TypeError, ValueError):
        return []


def _first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)):
        return next((v for v in value if isinstance(v, torch.Tensor)), None)
    return None


@torch.no_grad()
def trace(model: nn.Module, *args: Any, select: Selector = children_only, count_flops: bool = True,
          **kwargs: Any) -> list[TraceRow]:
    """Run ``model(*args, **kwargs)`` once and describe every call of a selected module.

    :param model: any ``nn.Module``
    :param args: the model's positional inputs (e.g. ``x (B, C, H, W), t (B,), context (B, L, D)``)
    :param select: ``select(name, module) -> bool`` picks the modules to report; names are
        relative to ``model`` (``"down_blocks.0.0"``). Modules that are never called (a
        ``ModuleList``) produce no row.
    :param count_flops: also count FLOPs per selected module (see the module docstring)
    :returns: one :class:`TraceRow` per call, in call order
    """
    rows: list[TraceRow] = []
    handles = []

    def hook_for(name: str, module: nn.Module):
        names = _argument_names(module)
        params = sum(p.numel() for p in module.parameters())

        def hook(mod, inputs, input_kwargs, output):
            given = list(zip(names, inputs)) + list(input_kwargs.items())
            tensors = [(n, v) for n, v in given if isinstance(v, torch.Tensor)]
            first = tensors[0][1] if tensors else None
            others = [f"{n} {tuple(v.shape)}" for n, v in tensors[1:]]
            out = _first_tensor(output)
            rows.append(TraceRow(len(rows) + 1, name, type(mod).__name__,
                                 None if first is None else tuple(first.shape), others,
                                 None if out is None else tuple(out.shape), params))

        return hook

    selected = [(name, m) for name, m in model.named_modules() if name and select(name, m)]
    if not selected:
        raise ValueError("select() picked no module of the model; names look like "
                         + ", ".join(repr(n) for n, _ in list(model.named_modules())[1:4]))
    for name, module in selected:
        handles.append(module.register_forward_hook(hook_for(name, module), with_kwargs=True))
    try:
        if count_flops:
            with reference_kernels(), FlopCounterMode(display=False) as counter:
                model(*args, **kwargs)
            counts = counter.get_flop_counts()
            # the counter names a module "<root class>.<name>" and sums all calls of it
            root = type(model).__name__
            for row in rows:
                row.flops = int(sum(counts.get(f"{root}.{row.name}", {}).values()))
        else:
            model(*args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return rows


def parameter_count(module: nn.Module) -> int:
    """Number of parameters of ``module``, its children included."""
    return sum(p.numel() for p in module.parameters())
