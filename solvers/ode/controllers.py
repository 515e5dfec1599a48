"""Per-sample step-size controllers.

Each controller maps the per-sample error ratio ``r = ||err / (atol + rtol |y|)||_RMS`` of a
step (accepted when ``r <= 1``) to a factor by which the step size is multiplied.

References:
    Hairer, Norsett & Wanner, *Solving ODEs I*, 2nd ed., II.4 (I controller, eq. 4.13).
    Hairer & Wanner, *Solving ODEs II*, IV.2 (PI controller, Gustafsson 1991); Soderlind,
    "Automatic control and adaptive time-stepping", Numer. Algorithms 31 (2002).
"""

from __future__ import annotations

import torch

__all__ = ["IController", "PIController", "get_controller"]

_LANES = 64


def lane_pow(x: torch.Tensor, exponent: float) -> torch.Tensor:
    """``x ** exponent`` whose rounding does not depend on the batch size.

    CPU kernels evaluate ``pow`` with SIMD code on full vector chunks and with scalar libm
    code on the remainder, and the two differ in the last bit. Padding the (per-sample)
    vector to a multiple of 64 lanes sends every element through the SIMD code, so a sample
    gets the same step sizes alone and inside any batch.
    """
    n = x.shape[0]
    pad = (-n) % _LANES
    if not pad:
        return x.pow(exponent)
    return torch.cat([x, x.new_ones(pad)]).pow(exponent)[:n]


class IController:
    """Integral (elementary) controller: ``factor = safety * r^(-1/(q+1))``, clipped.

    **Arguments:**

    - `safety`: safety factor (0.9, as scipy and torchdiffeq).
    - `factor_min`, `factor_max`: clip of the step-size factor ([0.2, 10]). After a rejected
      step the factor is additionally capped at 1.

    **Returns:** a controller object for `ode.solve(controller=...)`.
    """

    def __init__(self, safety: float = 0.9, factor_min: float = 0.2, factor_max: float = 10.0):
        if not 0.0 < safety <= 1.0:
            raise ValueError(f"IController: safety must be in (0, 1], got {safety}")
        if not 0.0 < factor_min < 1.0 < factor_max:
            raise ValueError("IController: need 0 < factor_min < 1 < factor_max, got "
                             f"{factor_min}, {factor_max}")
        self.safety, self.factor_min, self.factor_max = safety, factor_min, factor_max

    def init_state(self, n: int, ref: torch.Tensor):
        """Per-sample controller memory (none for the I controller)."""
        return None

    def factor(self, ratio, accept, state, error_order: int):
        """Step-size factor per sample, and the new controller state."""
        # ratio == 0 gives inf before the clip, which is what we want (max growth). A rejected
        # step has ratio > 1, so its factor is already below safety < 1: no extra cap needed.
        fac = lane_pow(ratio, -1.0 / (error_order + 1)).mul_(self.safety)
        return fac.clamp_(self.factor_min, self.factor_max), state


class PIController(IController):
    """Proportional-integral controller (Gustafsson): ``safety * r_n^(-a) * r_{n-1}^(b)``.

    With ``k = q + 1``, the defaults are ``a = 0.7 / k`` and ``b = 0.4 / k`` (Hairer & Wanner,
    IV.2). The previous ratio is remembered per sample and updated on accepted steps only.
    PI control mostly pays on problems needing many (> 100) steps (torchode paper, appendix).

    **Arguments:**

    - `alpha`, `beta`: the coefficients multiplied by ``1/k`` (default 0.7 and 0.4).
    - `safety`, `factor_min`, `factor_max`: as :class:`IController`.

    **Returns:** a controller object for `ode.solve(controller=...)`.
    """

    def __init__(self, alpha: float = 0.7, beta: float = 0.4, safety: float = 0.9,
                 factor_min: float = 0.2, factor_max: float = 10.0):
        super().__init__(safety, factor_min, factor_max)
        self.alpha, self.beta = alpha, beta

    def init_state(self, n: int, ref: torch.Tensor):
        return torch.ones(n, dtype=ref.dtype, device=ref.device)

    def factor(self, ratio, accept, state, error_order: int):
        k = error_order + 1
        # The previous ratio is floored so that a zero error does not blow up the product.
        prev = state.clamp(min=1e-4)
        fac = self.safety * lane_pow(ratio, -self.alpha / k) * lane_pow(prev, self.beta / k)
        fac = fac.clamp(self.factor_min, self.factor_max)
        fac = torch.where(accept, fac, fac.clamp(max=1.0))
        new_state = torch.where(accept, ratio, state)
        return fac, new_state


def get_controller(controller):
    """Resolve `"i"`, `"pi"` or a controller object."""
    if isinstance(controller, IController):
        return controller
    if isinstance(controller, str):
        key = controller.lower()
        if key == "i":
            return IController()
        if key == "pi":
            return PIController()
    raise ValueError(f"controller must be 'i', 'pi', IController() or PIController(); got "
                     f"{controller!r}")
