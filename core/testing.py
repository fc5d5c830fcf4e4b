"""Checks for any bijection, public so that users can test their own layers the way flowsuite
tests its own: ``check_inverse`` and ``check_logdet`` (against the autograd Jacobian)."""

from __future__ import annotations

import torch
from torch import Tensor

from flowsuite.core.bijection import Bijection


def _tolerance(dtype: torch.dtype, atol: float | None) -> float:
    if atol is not None:
        return atol
    return {torch.float64: 1e-8, torch.float32: 1e-3}.get(dtype, 5e-2)


def _prepare(bijection: Bijection, x: Tensor, context: Tensor | None) -> None:
    """Runs one forward pass so that data-dependent initialisation (ActNorm) has happened."""
    with torch.no_grad():
        bijection(x, context)


def check_inverse(bijection: Bijection, x: Tensor, context: Tensor | None = None,
                  atol: float | None = None) -> dict[str, float]:
    """Asserts that ``inverse(forward(x)) == x`` and that the two log-determinants cancel.

    Returns the largest errors found; raises ``AssertionError`` past ``atol`` (by default 1e-8
    in float64, 1e-3 in float32, scaled by the magnitude of the values).
    """
    tol = _tolerance(x.dtype, atol)
    _prepare(bijection, x, context)
    with torch.no_grad():
        z, ld_fwd = bijection(x, context)
        x_rec, ld_inv = bijection.inverse(z, context)
    if ld_fwd.shape != (x.shape[0],) or ld_inv.shape != (x.shape[0],):
        raise AssertionError(f"log-determinants must have shape ({x.shape[0]},), got "
                             f"{tuple(ld_fwd.shape)} and {tuple(ld_inv.shape)}")
    if x_rec.shape != x.shape or z.numel() != x.numel():
        raise AssertionError(f"shapes do not match: x {tuple(x.shape)}, z {tuple(z.shape)}, "
                             f"inverse {tuple(x_rec.shape)}")
    scale = 1.0 + float(x.abs().max())
    err_x = float((x_rec - x).abs().max())
    err_ld = float((ld_fwd + ld_inv).abs().max())
    ld_scale = 1.0 + float(ld_fwd.abs().max())
    if not (err_x <= tol * scale):
        raise AssertionError(f"inverse(forward(x)) differs from x by {err_x:.3g} (tolerance "
                             f"{tol * scale:.3g})")
    if not (err_ld <= tol * ld_scale):
        raise AssertionError(f"forward and inverse log-determinants do not cancel: {err_ld:.3g} "
                             f"(tolerance {tol * ld_scale:.3g})")
    return {"inverse_error": err_x, "logdet_error": err_ld}


def _full_jacobian(bijection: Bijection, x: Tensor, context: Tensor | None) -> Tensor:
    """The Jacobian of ``forward`` over the whole batch, ``(B, D, B, D)``."""
    b, d = x.shape[0], x[0].numel()

    def f(flat: Tensor) -> Tensor:
        z, _ = bijection(flat.reshape(x.shape), context)
        return z.reshape(b, d)

    return torch.autograd.functional.jacobian(f, x.reshape(b, d).detach())


def jacobian_logdet(bijection: Bijection, x: Tensor, context: Tensor | None = None) -> Tensor:
    """``log|det dz/dx|`` per sample ``(B,)`` from the autograd Jacobian of ``forward``.

    Each sample's Jacobian is ``(D, D)`` with ``D`` the number of elements in one sample, so keep
    the inputs small.
    """
    jac = _full_jacobian(bijection, x, context)
    blocks = torch.stack([jac[i, :, i, :] for i in range(x.shape[0])])
    return torch.linalg.slogdet(blocks.to(torch.float64)).logabsdet


def check_logdet(bijection: Bijection, x: Tensor, context: Tensor | None = None,
                 atol: float | None = None) -> dict[str, float]:
    """Asserts that the log-determinant of ``forward`` matches the autograd Jacobian's, and that
    samples do not depend on each other (the Jacobian is block diagonal over the batch)."""
    tol = _tolerance(x.dtype, atol)
    _prepare(bijection, x, context)
    with torch.no_grad():
        _, ld = bijection(x, context)
    b = x.shape[0]
    jac = _full_jacobian(bijection, x, context)
    cross = jac.clone()
    for i in range(b):
        cross[i, :, i, :] = 0
    leak = float(cross.abs().max()) if b > 1 else 0.0
    if leak > tol:
        raise AssertionError(f"samples of a batch influence each other (Jacobian entry {leak:.3g})")
    blocks = torch.stack([jac[i, :, i, :] for i in range(b)])
    expected = torch.linalg.slogdet(blocks.to(torch.float64)).logabsdet
    err = float((ld.to(torch.float64) - expected).abs().max())
    scale = 1.0 + float(expected.abs().max())
    if not (err <= tol * scale * 10):
        raise AssertionError(f"log-determinant off by {err:.3g} from the autograd Jacobian's "
                             f"(tolerance {tol * scale * 10:.3g})")
    return {"logdet_error": err, "cross_sample": leak}
