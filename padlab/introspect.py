"""Looking inside a step: which dtype each op ran in under a policy, and the gradient values.

:func:`autocast_dtypes` / :func:`autocast_table` record the ops of one forward pass with the
dtypes autocast gave them; :func:`gradient_values` returns every gradient value of one
backward pass; :func:`grad_underflow_fraction` is the share of them a float16 copy would flush
to zero at a loss scale (the statistic :func:`padlab.train.train_step` records each step, with
the same :func:`padlab.train.underflow_count`).
"""
from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from ._validate import check_choice, check_float, fail
from .precision import Policy, PolicyWarning, autocast_context, get_policy, prepare
from .train import default_loss, flat_gradients, model_device, to_device, underflow_count

__all__ = ["OpDtype", "autocast_dtypes", "autocast_table", "gradient_values", "grad_underflow_fraction"]


def _grad_list(grads: "Iterable[Tensor | None] | nn.Module") -> list[Tensor]:
    if isinstance(grads, nn.Module):
        return [p.grad for p in grads.parameters() if p.grad is not None]
    if isinstance(grads, Tensor):
        return [grads]
    out = []
    for g in grads:
        if g is None:
            continue
        if not isinstance(g, Tensor) or not g.is_floating_point():
            raise fail("grads", g, "hold floating-point tensors (or None)")
        out.append(g)
    return out



def grad_underflow_fraction(grads: "Iterable[Tensor | None] | Tensor | nn.Module", scale: float = 1.0) -> float:
    """Fraction of non-zero finite gradient values ``g`` with ``|g * scale| <= 2**-25``.

    Those are the values a float16 copy of ``g * scale`` would round to zero (fp16's smallest
    subnormal is ``2**-24``; half of it ties to the even pattern, zero). ``grads`` is a model
    (its ``.grad`` tensors), a tensor, or an iterable of tensors (``None`` entries are skipped).
    Returns 0.0 when there is no non-zero finite value.
    """
    scale = check_float("scale", scale, min_value=0.0, min_inclusive=False)
    if math.isinf(scale):
        raise fail("scale", scale, "be finite")
    gs = _grad_list(grads)
    if not gs:
        return 0.0
    flushed, live = underflow_count(flat_gradients(gs), scale)
    live_n = int(live)
    return int(flushed) / live_n if live_n else 0.0



def gradient_values(model: nn.Module, batch: Mapping[str, Any], policy: "str | Policy" = "fp32", *,
                    which: str = "parameters",
                    loss_fn: Callable[[nn.Module, Mapping[str, Any]], Tensor] = default_loss) -> np.ndarray:
    """Every gradient value of one forward/backward pass of ``batch``, as a float64 numpy array.

    ``which="parameters"``: the weight gradients; ``"activations"``: the gradients flowing
    back into the outputs of every ``nn.Linear`` (what autocast keeps in half precision
    during the backward pass). Runs on a copy made for ``policy`` (unscaled, no optimizer
    step): ``model`` and its ``.grad`` are untouched.
    """
    check_choice("which", which, ("parameters", "activations"))
    policy = get_policy(policy)
    dev = model_device(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PolicyWarning)
        prep = prepare(model, lambda ps: torch.optim.SGD(ps, lr=0.0), policy, dev)
    m = prep.model
    b = to_device(batch, dev)
    acts: list[Tensor] = []
    handles = []
    if which == "activations":
        def keep(_mod: nn.Module, _inp: Any, out: Tensor) -> None:
            if isinstance(out, Tensor) and out.requires_grad:
                out.register_hook(lambda g: acts.append(g.detach().reshape(-1).double().cpu()))
        handles = [mod.register_forward_hook(keep) for mod in m.modules() if isinstance(mod, nn.Linear)]
    try:
        m.train()
        with autocast_context(policy, dev):
            loss = loss_fn(m, b)
        loss.backward()
    finally:
        for h in handles:
            h.remove()
    if which == "parameters":
        gs = [p.grad for p in m.parameters() if p.grad is not None]
        return flat_gradients(gs).double().cpu().numpy() if gs else np.zeros(0)
    return torch.cat(acts).numpy() if acts else np.zeros(0)


class OpDtype(NamedTuple):
    """One op seen in a forward pass: the module it ran in, the op, and its input and output dtypes."""

    module: str
    op: str
    input_dtype: str
    output_dtype: str


# Functional ops worth reporting: what autocast casts (or leaves alone) in a Transformer.
_TRACKED_OPS = {
    "embedding", "linear", "layer_norm", "scaled_dot_product_attention", "softmax", "gelu", "tanh",
    "cross_entropy", "mse_loss", "add", "matmul", "bmm", "log_softmax",
}


def _dtype_name(x: Any) -> str:
    if isinstance(x, Tensor):
        return str(x.dtype).replace("torch.", "")
    if isinstance(x, (list, tuple)):
        for y in x:
            if isinstance(y, Tensor):
                return _dtype_name(y)
    return "-"


def _float_input_dtypes(args: tuple, kwargs: dict) -> str:
    """Distinct dtypes of the floating tensors among the inputs, in order: ``"float16+float32"``."""
    seen: list[str] = []
    for a in (*args, *kwargs.values()):
        for t in (a if isinstance(a, (list, tuple)) else (a,)):
            if isinstance(t, Tensor) and t.is_floating_point():
                name = _dtype_name(t)
                if name not in seen:
                    seen.append(name)
    return "+".join(seen)


class _OpRecorder(torch.overrides.TorchFunctionMode):
    def __init__(self, stack: list[str], out: list[OpDtype]) -> None:
        super().__init__()
        self.stack, self.out = stack, out

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        name = getattr(func, "__name__", str(func))
        inputs = _float_input_dtypes(args, kwargs) if name in _TRACKED_OPS else ""
        # Integer-only calls (index arithmetic, embedding ids alone) say nothing about precision.
        if inputs or (name == "embedding" and isinstance(result, Tensor)):
            self.out.append(OpDtype(self.stack[-1] if self.stack else "model", name, inputs or "-",
                                    _dtype_name(result)))
        return result


def autocast_dtypes(model: nn.Module, batch: Mapping[str, Any], policy: "str | Policy",
                    device: "str | torch.device", *,
                    loss_fn: Callable[[nn.Module, Mapping[str, Any]], Tensor] = default_loss) -> list[OpDtype]:
    """Which ops ran in which dtype during one forward pass (and loss) of ``batch`` under ``policy``.

    Forward hooks on every submodule name the module an op runs in (``encoder.layers.0.qkv``);
    a torch-function mode records each tracked functional op (``linear``, ``layer_norm``,
    ``scaled_dot_product_attention``, ``gelu``, ``tanh``, ``add`` (the residual stream),
    ``cross_entropy``, ...) with the dtypes of its floating inputs (``"float16+float32"``: the
    distinct dtypes in argument order, the weights included) and of its output; ops
    of the top-level module's own ``forward`` (the pooler's ``tanh``, the loss) are under ``"model"``.
    Autocast acts below that level, so the output dtype is the dtype the op actually ran in.
    Runs on a copy made by :func:`prepare`; ``model`` is untouched.
    """
    policy = get_policy(policy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PolicyWarning)
        prep = prepare(model, lambda ps: torch.optim.SGD(ps, lr=0.0), policy, device)
    m = prep.model
    b = to_device(batch, prep.device)
    stack: list[str] = []
    out: list[OpDtype] = []
    handles = []
    for name, mod in m.named_modules():
        if name:
            # Hooks must return None, or torch replaces the module's input / output with what they return.
            handles.append(mod.register_forward_pre_hook(lambda _m, _i, n=name: stack.append(n) and None))
            handles.append(mod.register_forward_hook(lambda _m, _i, _o: stack.pop() and None))
    m.eval()
    try:
        with torch.no_grad(), autocast_context(policy, prep.device), _OpRecorder(stack, out):
            loss_fn(m, b)
    finally:
        for h in handles:
            h.remove()
    return out


def autocast_table(model: nn.Module, batch: Mapping[str, Any], policies: Iterable[str],
                   device: "str | torch.device", *, first_layer_only: bool = True) -> dict[str, dict[str, str]]:
    """:func:`autocast_dtypes` for several policies, as ``{"op (module)": {policy: "in -> out"}}``.

    One entry per (module, op) in the order of the forward pass (the first call of each: a
    residual ``add`` appears once per layer). ``first_layer_only`` keeps layer 0 of a stack
    of identical layers (modules under ``.layers.<n>`` with ``n > 0`` are left out).
    """
    table: dict[str, dict[str, str]] = {}
    for pol in policies:
        seen = set()
        for o in autocast_dtypes(model, batch, pol, device):
            m = re.search(r"\.layers\.(\d+)", o.module)
            if first_layer_only and m and m.group(1) != "0":
                continue
            key = f"{o.op} ({o.module})"
            if key in seen:
                continue
            seen.add(key)
            table.setdefault(key, {})[get_policy(pol).name] = f"{o.input_dtype} -> {o.output_dtype}"
    return table

