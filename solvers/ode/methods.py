"""Explicit Runge--Kutta methods as objects (a tableau plus its interpolant), with aliases.

Adding a method is a few lines: build a :class:`~solvers.ode.ButcherTableau` and wrap it in
:class:`ExplicitRK` (or subclass it with the tableau as default), e.g.::

    ralston = ode.ExplicitRK(ode.ButcherTableau(c=(0.0, 2/3), a=((), (2/3,)),
                                                b=(0.25, 0.75), order=2, name="ralston"))
    ode.solve(f, y0, (0.0, 1.0), method=ralston, dt=0.01)
"""

from __future__ import annotations

import torch

from .tableau import TABLEAUS, ButcherTableau

__all__ = ["ExplicitRK", "Euler", "Midpoint", "Heun", "RK4", "Bosh3", "Dopri5", "Tsit5",
           "Dopri8", "get_method", "METHODS"]


class ExplicitRK:
    """An explicit Runge--Kutta method defined by a :class:`ButcherTableau`.

    **Arguments:**

    - `tableau`: the Butcher tableau. With ``tableau.b_err`` the method is adaptive (embedded
      error estimate); without it the method is fixed-step and `solve` needs ``dt=``.

    **Returns:** a method object for `ode.solve(method=...)`.
    """

    def __init__(self, tableau: ButcherTableau):
        if not isinstance(tableau, ButcherTableau):
            raise TypeError(f"ExplicitRK expects a ButcherTableau, got {type(tableau).__name__}")
        self.tableau = tableau
        self._interp_cache: dict = {}

    # Convenience views of the tableau (python floats: multiplying a tensor by a python float
    # costs no extra tensor creation on the hot path).
    @property
    def name(self) -> str:
        return self.tableau.name

    @property
    def order(self) -> int:
        return self.tableau.order

    @property
    def adaptive(self) -> bool:
        return self.tableau.adaptive

    @property
    def error_order(self) -> int:
        t = self.tableau
        return t.error_order if t.error_order is not None else t.order - 1

    @property
    def fsal(self) -> bool:
        return self.tableau.fsal

    def evals_per_step(self) -> int:
        """f evaluations per step attempt (the first stage is carried over from the last step)."""
        return self.tableau.stages

    def interp_weights(self, dtype, device) -> torch.Tensor:
        """The `(degree, n_ext)` continuous-extension matrix as a tensor (cached per dtype/device)."""
        key = (dtype, device)
        w = self._interp_cache.get(key)
        if w is None:
            w = torch.as_tensor(self.tableau.interp_matrix(), dtype=dtype, device=device)
            self._interp_cache[key] = w
        return w

    def stage_times(self, dtype, device) -> torch.Tensor:
        """The nodes ``c`` as a ``(stages, 1)`` column (cached per dtype/device)."""
        key = ("c", dtype, device)
        c = self._interp_cache.get(key)
        if c is None:
            c = self._interp_cache[key] = torch.tensor(self.tableau.c, dtype=dtype,
                                                       device=device)[:, None]
        return c

    def stage_matrices(self, dtype, device):
        """Row tensors ``a[i]`` (1, i), ``b`` (1, s) and ``b_err`` (1, s) (cached)."""
        key = ("stages", dtype, device)
        m = self._interp_cache.get(key)
        if m is None:
            t = self.tableau
            a = [None] + [torch.tensor([t.a[i]], dtype=dtype, device=device)
                          for i in range(1, t.stages)]
            b = torch.tensor([t.b], dtype=dtype, device=device)
            e = (torch.tensor([t.b_err], dtype=dtype, device=device) if t.b_err is not None
                 else None)
            m = self._interp_cache[key] = (a, b, e)
        return m

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _named(name: str, doc: str):
    def __init__(self):
        ExplicitRK.__init__(self, TABLEAUS[name])

    return type(name.capitalize() if name != "rk4" else "RK4", (ExplicitRK,),
                {"__init__": __init__, "__doc__": doc})


Euler = _named("euler", "Forward Euler (order 1, fixed step: needs `dt=`); Hermite dense output.")
Midpoint = _named("midpoint", "Explicit midpoint (order 2, fixed step); Hermite dense output.")
Heun = _named("heun", "Heun / explicit trapezoid (order 2, fixed step); Hermite dense output.")
RK4 = _named("rk4", "Classical Runge--Kutta (order 4, fixed step); Hermite dense output.")
Bosh3 = _named("bosh3", "Bogacki--Shampine 3(2), FSAL, adaptive; Hermite dense output.")
Dopri5 = _named("dopri5", "Dormand--Prince 5(4), FSAL, adaptive; Shampine's quartic dense output.")
Tsit5 = _named("tsit5", "Tsitouras 5(4), FSAL, adaptive; Tsitouras' quartic dense output.")
Dopri8 = _named("dopri8", "Prince--Dormand 8(7) 13M, adaptive; degree-6 continuous extension.")
Midpoint.__name__ = Midpoint.__qualname__ = "Midpoint"
Dopri5.__name__ = Dopri5.__qualname__ = "Dopri5"
Dopri8.__name__ = Dopri8.__qualname__ = "Dopri8"
Bosh3.__name__ = Bosh3.__qualname__ = "Bosh3"
Tsit5.__name__ = Tsit5.__qualname__ = "Tsit5"

METHODS = {"euler": Euler, "midpoint": Midpoint, "heun": Heun, "rk4": RK4, "bosh3": Bosh3,
           "dopri5": Dopri5, "tsit5": Tsit5, "dopri8": Dopri8}


_INSTANCES: dict = {}


def get_method(method) -> ExplicitRK:
    """Resolve a string alias or a method object."""
    if isinstance(method, ExplicitRK):
        return method
    if isinstance(method, str):
        key = method.lower()
        if key in METHODS:
            # One shared instance per alias, so that its cached tableau tensors are reused.
            inst = _INSTANCES.get(key)
            if inst is None:
                inst = _INSTANCES[key] = METHODS[key]()
            return inst
    raise ValueError(f"unknown method {method!r}; choose one of {sorted(METHODS)} or pass an "
                     "ode.ExplicitRK(tableau)")
