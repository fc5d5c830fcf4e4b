"""Masked autoregressive layers: MADE (Germain et al., 2015) as the conditioner of MAF
(Papamakarios et al., 2017) and IAF (Kingma et al., 2016)."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch
from torch import Tensor, nn

from flowsuite.core.bijection import Bijection
from flowsuite.core.conditioners import broadcast_context, linear, make_activation, narrow_input
from flowsuite.core.elementwise import (
    Affine,
    ElementwiseTransform,
    _affine_packed,
    _affine_packed_backward,
    logdet_sum,
    make_transform,
    params_last,
)


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 mask ``(out, in)``.

    A mask of all ones (every hidden layer of a two-feature MADE) is skipped. For a narrow input
    (the first layer: at most 8 features into more outputs) the mask is stored input-major, so
    the masked weight comes out in the layout that ``linear`` multiplies fastest on CPUs, without
    a copy in every call.
    """

    def __init__(self, in_features: int, out_features: int, mask: Tensor):
        super().__init__(in_features, out_features)
        mask = mask.float()
        if narrow_input(in_features, out_features):
            mask = mask.t().contiguous().t()
        self.register_buffer("mask", mask)
        self.full = bool(mask.all())

    def forward(self, x: Tensor) -> Tensor:
        # mask first: the product takes the mask's memory layout.
        return linear(x, self.weight if self.full else self.mask * self.weight, self.bias)


class MADE(nn.Module):
    """A masked MLP whose output ``k`` (each of ``num_params`` blocks of ``features``) depends only
    on inputs that come before ``k`` in ``order``, and on the context.

    ``x: (B, ..., features)`` -> ``(B, ..., num_params * features)``. Every layer, the last one
    included, starts with PyTorch's default (random) initialisation: with a zero last layer the
    hidden layers get no gradient until it has grown, and a MAF learns measurably slower
    (BENCHMARKS.md, "The MADE's last layer"). ``identity_init=True`` zeroes the last layer, so a
    layer built on it starts as the identity (to grow a trained flow without changing it).
    """

    def __init__(self, features: int, num_params: int, hidden: Sequence[int] = (64, 64),
                 context_features: int = 0, order: Sequence[int] | None = None,
                 activation: str = "relu", identity_init: bool = False):
        super().__init__()
        hidden = list(hidden)
        order_t = (torch.arange(features) if order is None
                   else torch.as_tensor(list(order), dtype=torch.long))
        if sorted(order_t.tolist()) != list(range(features)):
            raise ValueError(f"order must be a permutation of 0..{features - 1}")
        degrees_in = order_t + 1  # input i may influence outputs of higher degree only
        self.register_buffer("order", order_t)
        layers: list[nn.Module] = []
        prev = degrees_in
        for i, h in enumerate(hidden):
            if features > 1:
                deg = torch.arange(h) % (features - 1) + 1
            else:
                deg = torch.zeros(h, dtype=torch.long)  # sees only the context
            layers.append(MaskedLinear(prev.numel(), h, deg[:, None] >= prev[None, :]))
            if i == 0:
                self.first_index = len(layers) - 1
            layers.append(make_activation(activation))
            prev = deg
        out_deg = degrees_in.repeat(num_params)
        last = MaskedLinear(prev.numel(), num_params * features, out_deg[:, None] > prev[None, :])
        if identity_init:
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        self.first = layers[0]
        self.rest = nn.Sequential(*layers[1:], last)
        self.relu = activation == "relu"
        self.context = (nn.Linear(context_features, hidden[0], bias=False)
                        if context_features else None)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        # The sub-layers' ``forward`` is called directly: ``nn.Module.__call__`` costs a few
        # microseconds per layer, a sixth of a small MAF layer's time on a CPU. Hooks therefore
        # go on the MADE itself, not on its sub-layers.
        h = self.first.forward(x)
        if self.context is not None:
            h = h + self.context_projection(x, context)
        for layer in self.rest:
            h = layer.forward(h)
        return h

    def context_projection(self, x: Tensor, context: Tensor | None) -> Tensor:
        """The context's share of the first hidden layer, broadcastable against it."""
        if context is None:
            raise ValueError("this layer was built with context_features and needs a context")
        return self.context.forward(broadcast_context(context, x, -1))

    def linears(self) -> list[MaskedLinear]:
        """The masked layers, input to output."""
        return [self.first, *(m for m in self.rest if isinstance(m, MaskedLinear))]


def _weight_grad(g: Tensor, h: Tensor) -> Tensor:
    """``g^T h``, the gradient of a linear layer's ``(out, in)`` weight. For a narrow input
    (at most 8 features) it is made as ``(h^T g)^T``, an input-major matrix: MKL computes that
    product about twice as fast on CPUs (2 -> 64 features, 512 rows)."""
    if narrow_input(h.shape[1], g.shape[1]):
        return (h.t() @ g).t()
    return g.t() @ h


class _MadeAffineChain(torch.autograd.Function):
    """A chain of MAF layers' likelihood passes (each a MADE of ReLUs and the affine transform
    it parameterises), as one autograd node with a hand-written backward: ``MaskedAutoregressive``
    on CPUs, alone or as a run of consecutive layers in a ``Compose``.

    A small MAF layer is bound by memory traffic and by the bookkeeping around its operations,
    not by arithmetic: here the ReLUs act in place, the backward masks gradients in place, of
    the MLPs' intermediates only the hidden activations are kept (about half the fresh memory
    that the composed autograd graph touches), and a whole run of layers is one node whose
    log-determinants are summed in place. First derivatives only (double backward raises).

    ``x: (B, ..., F)``, features last. ``plan``: per layer ``(n, has_context, bound, masks)``
    (its ``n`` masked linear layers, whether a context projection comes with it, its scale
    bound, and the ``n`` masks, None where all ones). ``tensors``: per layer, the context's
    share of its first hidden layer (where ``has_context``), then the weight and bias of each
    masked linear layer in turn. Returns ``(y, logdet)``.
    """

    @staticmethod
    def forward(ctx, x: Tensor, plan: tuple, *tensors: Tensor) -> tuple[Tensor, Tensor]:
        shape = x.shape
        f = shape[-1]
        saved: list[Tensor] = []
        cshapes: list[torch.Size | None] = []
        total: Tensor | None = None
        k = 0
        for n, has_context, bound, masks in plan:
            cproj = tensors[k] if has_context else None
            k += has_context
            params = tensors[k:k + 2 * n]
            k += 2 * n
            weights = [w if m is None else m * w for m, w in zip(masks, params[0::2], strict=True)]
            biases = params[1::2]
            h = x.reshape(-1, f)
            hidden = []
            for i in range(n - 1):
                a = torch.addmm(biases[i], h, weights[i].t())
                if i == 0 and cproj is not None:
                    a.view(*shape[:-1], -1).add_(cproj)
                h = a.relu_()
                hidden.append(h)
            out = torch.addmm(biases[-1], h, weights[-1].t()).view(*shape[:-1], 2 * f)
            y, logdet, th, e = _affine_packed(x, out, -1, bound)
            saved += [x, th, e, *hidden, *weights]
            cshapes.append(None if cproj is None else cproj.shape)
            # The first log-determinant is a fresh sum, so the total may grow in place.
            total = logdet if total is None else total.add_(logdet)
            x = y
        ctx.save_for_backward(*saved)
        ctx.plan, ctx.cshapes = plan, cshapes
        return x, total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy: Tensor, glogdet: Tensor) -> tuple[Tensor | None, ...]:
        saved = ctx.saved_tensors
        need = ctx.needs_input_grad
        plan = ctx.plan
        # Where each layer's saved tensors and inputs start.
        starts, firsts, s, k = [], [], 0, 2
        for n, has_context, _, _ in plan:
            starts.append(s)
            firsts.append(k)
            s += 2 + 2 * n
            k += has_context + 2 * n
        grads: list[Tensor | None] = [None] * (k - 2)
        for layer in range(len(plan) - 1, -1, -1):
            n, has_context, _, masks = plan[layer]
            s, k = starts[layer], firsts[layer]
            x, th, e = saved[s:s + 3]
            hidden, weights = saved[s + 3:s + 2 + n], saved[s + 2 + n:s + 2 + 2 * n]
            shape, f = x.shape, x.shape[-1]
            gx, gout = _affine_packed_backward(x, th, e, gy, glogdet, -1)
            g = gout.reshape(-1, 2 * f)  # the gradient of the last linear layer's output
            p = k + has_context  # the input index of this layer's first weight
            for i in range(n - 1, -1, -1):
                h = hidden[i - 1] if i > 0 else x.reshape(-1, f)
                if need[p + 2 * i]:
                    gw = _weight_grad(g, h)
                    grads[p + 2 * i - 2] = gw if masks[i] is None else gw.mul_(masks[i])
                if need[p + 2 * i + 1]:
                    grads[p + 2 * i - 1] = g.sum(0)
                if i > 0:
                    gh = g @ weights[i]
                    g = torch.ops.aten.threshold_backward.grad_input(gh, h, 0, grad_input=gh)
                    if i == 1 and has_context and need[k]:
                        grads[k - 2] = g.view(*shape[:-1], -1).sum_to_size(ctx.cshapes[layer])
                elif layer > 0 or need[0]:
                    gx = torch.addmm(gx.reshape(-1, f), g, weights[0]).view(shape)
            gy = gx
        return (gy if need[0] else None, None, *grads)


def _maf_chain(layers: Sequence[MaskedAutoregressive], x: Tensor, context: Tensor | None
               ) -> tuple[Tensor, Tensor]:
    """The likelihood pass of consecutive MAF layers (each ``_fusable``, all on the same ``dim``)
    through ``_MadeAffineChain``."""
    dim = layers[0].dim
    last = layers[0]._features_last(x)
    if not last:
        x = torch.movedim(x, dim, -1)
    plan, tensors = [], []
    for layer in layers:
        made = layer.made
        linears = made.linears()
        if made.context is not None:
            tensors.append(made.context_projection(x, context))
        for m in linears:
            tensors += (m.weight, m.bias)
        plan.append((len(linears), made.context is not None, layer.transform.scale_bound,
                     [None if m.full else m.mask for m in linears]))
    z, logdet = _MadeAffineChain.apply(x, tuple(plan), *tensors)
    return (z if last else torch.movedim(z, -1, dim)), logdet


class MaskedAutoregressive(Bijection):
    """An autoregressive flow layer over the features on ``dim`` with an element-wise transform
    (``"affine"`` or ``"spline"``) whose parameters come from a MADE.

    ``direction="maf"``: ``forward`` (the likelihood) takes one network pass and ``inverse``
    (sampling) takes ``features`` passes. ``direction="iaf"`` swaps the costs: sampling in one
    pass, the likelihood of new data in ``features`` passes. ``identity_init=True`` starts the
    layer as the identity (its MADE's last layer at zero); by default it starts random, which
    trains faster.
    """

    def __init__(self, features: int, hidden: Sequence[int] = (64, 64), context_features: int = 0,
                 *, transform: str | ElementwiseTransform = "affine", direction: str = "maf",
                 order: Sequence[int] | str | None = None, dim: int = -1,
                 activation: str = "relu", identity_init: bool = False, **transform_kwargs):
        super().__init__()
        if direction not in ("maf", "iaf"):
            raise ValueError(f"direction must be 'maf' or 'iaf', got {direction!r}")
        if isinstance(transform, str):
            transform = make_transform(transform, **transform_kwargs)
        if order == "reverse":
            order = list(range(features - 1, -1, -1))
        self.features, self.dim, self.direction = features, dim, direction
        self.transform = transform
        self.made = MADE(features, transform.num_params, hidden, context_features,
                         order=order, activation=activation, identity_init=identity_init)

    def _params(self, u: Tensor, context: Tensor | None) -> Tensor:
        p = params_last(self.made(u, context), -1, self.features, self.transform.num_params)
        return p if p.dtype == u.dtype else p.to(u.dtype)

    def _one_pass(self, x: Tensor, context: Tensor | None, forward: bool) -> tuple[Tensor, Tensor]:
        """Transforms ``x`` (features last) with parameters computed from ``x`` itself."""
        if forward:
            return self.transform.forward_packed(x, self.made(x, context), -1)
        fn = self.transform.inverse
        y, logderiv = fn(x, self._params(x, context))
        return y, logdet_sum(logderiv)

    def _fusable(self, x: Tensor) -> bool:
        """Whether the likelihood pass may take ``_MadeAffineChain``: an affine MAF layer of ReLUs
        without hooks on its MADE, training in float32 or float64 on a CPU (measured there; CUDA,
        autocast and ``torch.compile`` keep the composed path, which they fuse themselves)."""
        made = self.made
        return (made.relu and self.direction == "maf" and x.device.type == "cpu"
                and torch.is_grad_enabled()
                and isinstance(self.transform, Affine)
                and x.dtype in (torch.float32, torch.float64)
                and made.first.weight.dtype == x.dtype
                and not made._forward_hooks and not made._forward_pre_hooks
                and not torch.is_autocast_enabled("cpu")
                and not torch.compiler.is_compiling())

    def _fusion_key(self, x: Tensor) -> Hashable | None:
        if type(self).forward is not MaskedAutoregressive.forward or not self._fusable(x):
            return None
        return (MaskedAutoregressive, self.dim % x.dim())

    @classmethod
    def _forward_run(cls, run: Sequence[Bijection], x: Tensor, context: Tensor | None
                     ) -> tuple[Tensor, Tensor]:
        return _maf_chain(run, x, context)

    def _sequential(self, y: Tensor, context: Tensor | None,
                    forward: bool) -> tuple[Tensor, Tensor]:
        """Solves for ``x`` with ``y = T(x; params(x))`` (``forward=False``) or
        ``y = T^-1(x; params(x))`` (``forward=True``), one feature per network pass."""
        fn = self.transform.forward if forward else self.transform.inverse
        x = torch.zeros_like(y)
        logderiv = torch.zeros_like(y)
        for i in self.made.order.tolist():
            out, ld = fn(y, self._params(x, context))
            x = torch.cat([x[..., :i], out[..., i:i + 1], x[..., i + 1:]], dim=-1)
            logderiv = torch.cat([logderiv[..., :i], ld[..., i:i + 1], logderiv[..., i + 1:]], -1)
        return x, logdet_sum(logderiv)

    def _features_last(self, x: Tensor) -> bool:
        return self.dim in (-1, x.dim() - 1)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if self._fusable(x):
            return _maf_chain([self], x, context)
        last = self._features_last(x)
        if not last:
            x = torch.movedim(x, self.dim, -1)
        if self.direction == "maf":
            z, ld = self._one_pass(x, context, forward=True)
        else:
            z, ld = self._sequential(x, context, forward=True)
        return (z if last else torch.movedim(z, -1, self.dim)), ld

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        last = self._features_last(z)
        if not last:
            z = torch.movedim(z, self.dim, -1)
        if self.direction == "maf":
            x, ld = self._sequential(z, context, forward=False)
        else:
            x, ld = self._one_pass(z, context, forward=False)
        return (x if last else torch.movedim(x, -1, self.dim)), ld
