"""Mixed ghost clipping with book-keeping: DP-SGD without per-sample gradients.

DP-SGD needs each sample's gradient norm ``||g_i||`` to clip, then ``sum_i c_i g_i`` with
``c_i = min(1, C / (||g_i|| + 1e-6))``. Opacus' ``hooks`` mode materialises every ``g_i``
(a batch-sized copy of every weight), then reads them twice. Here
(``privacy.grad-sample-mode = ghost``) one backward pass runs to the input batch only, so
autograd computes no weight gradient; each layer's hook gets its input ``A`` and output
gradient ``G`` and computes only the per-sample norms; the clipped sum is then, per layer,
one weight-gradient of ``A`` and ``c``-scaled ``G`` (book-keeping, Bu et al. 2023).

Per convolution the norm is computed whichever way is cheaper (mixed ghost clipping, Bu et
al. 2022). With ``T`` output positions, ``D = C_in k^2`` inputs and ``P`` outputs per
position, ``g_i = A_i^T G_i``, so ``||g_i||^2 = <A_i A_i^T, G_i G_i^T>`` (the ghost norm,
O(T^2 (D + P)), no gradient) or the instantiated gradient's norm (O(T D P)): ghost wins
when ``T^2 < D P``, in the deep low-resolution layers. Transposed convolutions use the same
identity with input and output gradient exchanged; linear layers Opacus' ghost norm;
normalisation layers (few parameters) Opacus' per-sample gradients.

The noise, its generator, the coefficients and the accountant are Opacus' own, so a step
equals the ``hooks`` step for the same batch and seed to float tolerance
(tests/privacy/test_ghost.py). A sample whose gradient is not finite gets ``c_i = 0`` and
its rows are zeroed, as :func:`medfl.privacy.dp.drop_nonfinite_samples` drops it in
``hooks`` mode.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from opacus.grad_sample.functorch import ft_compute_per_sample_gradient
from opacus.grad_sample.grad_sample_module_fast_gradient_clipping import (
    GradSampleHooksFastGradientClipping,
    GradSampleModuleFastGradientClipping,
)
from opacus.utils.module_utils import trainable_parameters
from torch import nn
from torch.nn import functional as F  # noqa: N812 - PyTorch's own convention
from torch.nn.grad import conv2d_weight

__all__ = ["NORM_SAMPLERS", "BookKeeping", "GhostBackward", "book_keep", "conv_norms",
           "linear_norms", "prelu_norms", "weighted_grads"]

Norms = dict[Any, torch.Tensor]  # parameter -> (B,) per-sample norms
Grads = dict[Any, torch.Tensor]  # parameter -> its summed gradient
#: Largest ghost Gram matrix batch (elements) built at once; larger batches go in chunks.
_GRAM_ELEMENTS = 1 << 26


def _ghost_sq_norms(cols: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """``||cols_i @ grads_i^T||_F^2`` per sample of (B, D, T) ``cols`` and (B, P, T)
    ``grads`` through the Gram matrices: ``<A_i A_i^T, G_i G_i^T>``, in chunks."""
    t = cols.shape[2]
    chunk = max(1, _GRAM_ELEMENTS // (t * t))
    out = []
    for a, g in zip(cols.split(chunk), grads.split(chunk), strict=True):
        out.append((a.transpose(1, 2) @ a).mul_(g.transpose(1, 2) @ g).sum(dim=(1, 2)))
    return torch.cat(out).clamp_min_(0.0)


def _unfold(module: Any, x: torch.Tensor) -> torch.Tensor:
    """``x`` (B, C, H, W) unfolded with ``module``'s kernel geometry: (B, C k^2, T)."""
    return F.unfold(x, module.kernel_size, dilation=module.dilation,
                    padding=module.padding, stride=module.stride)


def _per_sample_weight_grads(module: Any, inp: torch.Tensor, grad_out: torch.Tensor
                             ) -> torch.Tensor:
    """Every sample's weight gradient of the convolution ``inp`` -> ``grad_out``, as one
    grouped weight-gradient (the batch as groups: PyTorch's own kernels, no unfold)."""
    b, c_in = inp.shape[:2]
    c_out = grad_out.shape[1]
    return conv2d_weight(
        inp.reshape(1, b * c_in, *inp.shape[2:]), (b * c_out, c_in, *module.kernel_size),
        grad_out.reshape(1, b * c_out, *grad_out.shape[2:]), module.stride, module.padding,
        module.dilation, b).reshape(b, -1)


def conv_norms(module: Any, activations: list[torch.Tensor],
               backprops: torch.Tensor) -> Norms:
    """Per-sample gradient norms of a 2-D (transposed) convolution's weight and bias,
    from its input ``activations[0]`` and output gradient ``backprops`` (Opacus' norm
    sampler signature), by the ghost norm when ``T^2 < D P``, else instantiated.
    Grouped, non-zero-padded and string-padded convolutions use Opacus' per-sample
    gradients instead (see :func:`_supported`)."""
    x = activations[0]
    b = x.shape[0]
    # y = conv_transpose(x, W) is the input gradient of a convolution with kernel W, so
    # W's gradient is that convolution's weight gradient from the output gradient to x
    inp, grad_out = (backprops, x) if isinstance(module, nn.ConvTranspose2d) else (x, backprops)
    out: Norms = {}
    if module.weight.requires_grad:
        t = grad_out[0, 0].numel()
        if t * t < module.weight[0].numel() * grad_out.shape[1]:  # T^2 < D P
            sq = _ghost_sq_norms(_unfold(module, inp), grad_out.reshape(b, grad_out.shape[1], -1))
        else:
            sq = _per_sample_weight_grads(module, inp, grad_out).pow(2).sum(dim=1)
        out[module.weight] = sq.sqrt()
    if module.bias is not None and module.bias.requires_grad:
        out[module.bias] = backprops.reshape(b, backprops.shape[1], -1).sum(dim=2).norm(dim=1)
    return out


def prelu_norms(module: Any, activations: list[torch.Tensor],
                backprops: torch.Tensor) -> Norms:
    """Per-sample gradient norm of a PReLU's slope(s): ``sum g * min(x, 0)`` per channel
    (one slope: over everything), which Opacus otherwise computes with functorch."""
    x = activations[0]
    prod = (backprops * x.clamp(max=0.0)).reshape(x.shape[0], x.shape[1] if x.ndim > 1
                                                  else 1, -1).sum(dim=2)
    weight = module.weight
    if weight.numel() == 1:
        prod = prod.sum(dim=1, keepdim=True)
    return {weight: prod.norm(dim=1)} if weight.requires_grad else {}


def _supported(module: Any) -> bool:
    """Convolutions :func:`conv_norms` computes exactly (the others keep Opacus' path)."""
    return bool(module.groups == 1 and module.padding_mode == "zeros"
                and not isinstance(module.padding, str))


def _dispatch(module: Any, activations: list[torch.Tensor],
              backprops: torch.Tensor) -> Norms:
    if isinstance(module, nn.PReLU):
        return prelu_norms(module, activations, backprops)
    if _supported(module):
        return conv_norms(module, activations, backprops)
    sampler = GradSampleHooksFastGradientClipping.GRAD_SAMPLERS.get(
        type(module), ft_compute_per_sample_gradient)
    grads = sampler(module, activations, backprops)
    return {p: g.reshape(len(g), -1).norm(dim=1) for p, g in grads.items()}


def linear_norms(module: Any, activations: list[torch.Tensor],
                 backprops: torch.Tensor) -> Norms:
    """Per-sample gradient norms of a linear layer: ``||a_i|| ||g_i||`` for one input
    row per sample; for sequences the instantiated gradient, or the ghost norm when
    ``T^2 < D P``."""
    x, g = _f32(activations[0]), _f32(backprops)
    b = x.shape[0]
    out: Norms = {}
    if module.weight.requires_grad:
        if x.ndim == 2:
            out[module.weight] = x.norm(dim=1) * g.norm(dim=1)
        else:
            a3, g3 = x.reshape(b, -1, x.shape[-1]), g.reshape(b, -1, g.shape[-1])
            t, d, p = a3.shape[1], a3.shape[2], g3.shape[2]
            sq = (_ghost_sq_norms(a3.transpose(1, 2), g3.transpose(1, 2)) if t * t < d * p
                  else torch.einsum("bto,bti->boi", g3, a3).pow(2).sum(dim=(1, 2)))
            out[module.weight] = sq.sqrt()
    if module.bias is not None and module.bias.requires_grad:
        out[module.bias] = g.reshape(b, -1, g.shape[-1]).sum(dim=1).norm(dim=1)
    return out


#: The layers whose per-sample norms are computed without their per-sample gradients.
NORM_SAMPLERS = {nn.Linear: linear_norms, nn.Conv2d: _dispatch, nn.ConvTranspose2d: _dispatch,
                 nn.PReLU: _dispatch}


def _f32(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32: norms and clipped sums are computed in float32 whatever precision
    the forward pass ran in."""
    return t if t.dtype == torch.float32 else t.float()


class BookKeeping(GradSampleModuleFastGradientClipping):
    """Opacus' fast-gradient-clipping module that keeps, per layer, what the clipped sum
    needs (book-keeping, Bu et al. 2023): one backward pass computes every layer's output
    gradient and per-sample norms; the clipped sum is then one weighted weight-gradient
    per layer, with no second backward pass and no per-sample gradient of the large
    layers. Installed by :func:`book_keep`."""

    _kept: list[tuple[Any, list[torch.Tensor], torch.Tensor]]

    def capture_backprops_hook(self, module: nn.Module, _forward_input: Any,
                               forward_output: Any, loss_reduction: str,
                               batch_first: bool) -> None:
        """Norms now; the layer's input and output gradient (or, for small layers without
        a norm sampler, its per-sample gradients) kept for :meth:`clipped_sum`."""
        if not self.hooks_enabled:
            return
        if type(module) in NORM_SAMPLERS and len(getattr(module, "activations", ())) > 1:
            raise NotImplementedError(f"parameter tying: a {type(module).__name__} is used "
                                      "twice in one forward pass; ghost clipping cannot "
                                      "split its per-sample norms")
        activations, backprops = self.rearrange_grad_samples(
            module=module, backprops=_f32(forward_output[0].detach()),
            loss_reduction=loss_reduction, batch_first=batch_first)
        activations = [_f32(a) if a.is_floating_point() else a for a in activations]
        for _, p in trainable_parameters(module):
            p._forward_counter -= 1
        if type(module) in NORM_SAMPLERS:
            for p, norms in NORM_SAMPLERS[type(module)](
                    module, activations, backprops).items():
                p._norm_sample = norms
            self._kept.append((module, activations, backprops))
        else:
            sampler = self.GRAD_SAMPLERS.get(type(module), ft_compute_per_sample_gradient)
            for p, gs in sampler(module, activations, backprops).items():
                if p.requires_grad:
                    kept = getattr(p, "_kept_sample", None)
                    p._kept_sample = _f32(gs) if kept is None else kept + _f32(gs)
        if not module.activations and hasattr(module, "max_batch_len"):
            del module.max_batch_len

    def forget_batch(self) -> None:
        """Drop what an empty (Poisson) batch's forward pass left behind: it has no
        backward pass, and a stale input would count as a second use of each layer."""
        for module in self._module.modules():
            if getattr(module, "activations", None):
                module.activations.clear()
            if hasattr(module, "max_batch_len"):
                del module.max_batch_len
        for p in self.trainable_parameters:
            p._forward_counter, p._kept_sample = 0, None
        self._kept = []

    def clipped_sum(self, max_grad_norm: float) -> None:
        """Set every trainable parameter's ``grad`` to ``sum_i c_i g_i``, ``c_i = min(1,
        C / (||g_i|| + 1e-6))``, 0 for a sample whose gradient is not finite."""
        params = [p for p in self.trainable_parameters]
        for p in params:
            kept = getattr(p, "_kept_sample", None)
            if kept is not None:
                p._norm_sample = kept.reshape(len(kept), -1).norm(dim=1)
        norms = self.get_norm_sample()
        good = torch.isfinite(norms)
        coef = torch.where(good, (max_grad_norm / (norms + 1e-6)).clamp(max=1.0), 0.0)
        kept_layers, self._kept = self._kept, []
        self.disable_hooks()  # weighted_grads may run a layer again: not a forward pass
        try:
            for module, activations, backprops in kept_layers:
                grads = weighted_grads(module, [_rows_where(good, a) for a in activations],
                                       _rows_where(good, backprops) * _rows(coef, backprops))
                for p, g in grads.items():
                    p.grad = g
        finally:
            self.enable_hooks()
        for p in params:
            kept = getattr(p, "_kept_sample", None)
            if kept is not None:
                p.grad = torch.einsum("b,b...->...", coef.to(kept.dtype),
                                      _rows_where(good, kept)).view_as(p)
                p._kept_sample = None


def weighted_grads(module: Any, activations: list[torch.Tensor],
                   scaled: torch.Tensor) -> Grads:
    """``sum_i`` of each sample's weight (and bias) gradient of ``module``, for the input
    ``activations`` and the output gradient ``scaled`` (already multiplied by ``c_i``):
    PyTorch's own weight-gradient kernels, or autograd on the layer alone."""
    weight, bias, x = module.weight, getattr(module, "bias", None), activations[0]
    if isinstance(module, nn.Linear):
        out = {weight: torch.einsum("...o,...i->oi", scaled, x)}
    elif isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)) and _supported(module):
        inp, grad_out = (x, scaled) if isinstance(module, nn.Conv2d) else (scaled, x)
        out = {weight: conv2d_weight(
            inp, weight.shape, grad_out, module.stride, module.padding, module.dilation,
            module.groups)}
    else:
        params = [p for p in module.parameters(recurse=False) if p.requires_grad]
        with torch.enable_grad():
            grads = torch.autograd.grad(module(*activations), params, grad_outputs=scaled)
        return dict(zip(params, grads, strict=True))
    if bias is not None and bias.requires_grad:
        out[bias] = scaled.sum(dim=[d for d in range(scaled.ndim) if d != (
            scaled.ndim - 1 if isinstance(module, nn.Linear) else 1)])
    return {p: g for p, g in out.items() if p.requires_grad}


def book_keep(module: GradSampleModuleFastGradientClipping) -> BookKeeping:
    """Turn the module Opacus' ``make_private(grad_sample_mode="ghost")`` returned into
    a :class:`BookKeeping` one, with its hooks re-installed."""
    module.remove_hooks()
    module.__class__ = BookKeeping
    book = cast(BookKeeping, module)
    book._kept = []
    book.add_hooks(loss_reduction=book.loss_reduction, batch_first=book.batch_first,
                   force_functorch=book.force_functorch)
    return book


class GhostBackward:
    """The ``backward`` of a training step in ``ghost`` mode (see :class:`BookKeeping`).

    The backward pass runs to the input batch only (``torch.autograd.grad`` on ``xb``, which
    :func:`medfl.training.train_epochs` makes require a gradient), so autograd computes no
    weight gradient at all: the layers' hooks compute the norms, then
    :meth:`BookKeeping.clipped_sum` the clipped sum.
    """

    def __init__(self, module: BookKeeping, optimizer: Any) -> None:
        self.module = module
        self.optimizer = optimizer

    def __call__(self, loss: torch.Tensor, logits: torch.Tensor, xb: torch.Tensor) -> None:
        """Leave ``sum_i c_i g_i`` in every trainable parameter's ``grad``."""
        if len(logits):
            torch.autograd.grad(loss, [xb])
            self.module.clipped_sum(self.optimizer.max_grad_norm)
        else:  # an empty Poisson batch: the step adds the noise alone
            self.module.forget_batch()
        for p in self.optimizer.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)


def _rows(scale: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``scale`` (B,) shaped to multiply the rows of ``like`` (B, ...)."""
    return scale.to(like.device, like.dtype).reshape(-1, *[1] * (like.ndim - 1))


def _rows_where(good: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``t`` with the rows of the samples not ``good`` set to 0 (a zero coefficient alone
    would still meet an infinite activation: 0 * inf = NaN)."""
    return t if bool(good.all()) else torch.where(_rows(good, t).bool(), t, 0.0)
