"""Backsolve adjoint for :func:`solvers.ode.solve` (``adjoint=True``).

The forward pass solves the ODE without recording a graph. The backward pass integrates the
augmented system

    d/dt [y, a, a_theta] = [f(t, y), -a^T df/dy, -a^T df/dtheta]

backwards in time from each sample's final time to its initial time, with our own batched
per-sample solver, starting from ``a(t1) = dL/dy(t1)`` and ``a_theta(t1) = 0``; then
``a(t0) = dL/dy0`` and ``a_theta(t0) = dL/dtheta`` (Chen, Rubanova, Bettencourt & Duvenaud 2018,
"Neural ordinary differential equations", NeurIPS, eq. 4-5 and appendix B). With evaluation times
``t_eval`` the backward solve goes segment by segment between them, adding the incoming gradient
``dL/dy(t_k)`` to ``a`` at every ``t_k`` and restarting ``y`` from the stored forward value there.

Because every sample has its own steps, ``a_theta`` is carried *per sample* (state size
``2 * state + n_params`` per sample) and summed over the batch at the end. Per-sample
vector-Jacobian products come from one plain backward pass per sample for up to 8 active
samples, else from ``torch.func.vmap`` over ``torch.func.vjp`` when ``f`` is an ``nn.Module``
(cost linear in the batch), else from ``torch.autograd.grad(..., is_grads_batched=True)`` (cost
quadratic in the batch).

The ``"seminorm"`` option (Kidger, Chen & Lyons 2021, "'Hey, that's not an ODE': faster ODE
adjoints via seminorms", ICML) measures the backward solve's error over ``y`` and ``a`` only: the
parameter part ``a_theta`` is a pure quadrature whose error never feeds back into the solution,
so controlling it wastes steps. It is implemented through per-component tolerances: the
parameter components get a huge ``atol`` (their scaled error is ~0), and the tolerances of the
other components are multiplied by ``sqrt(2 d / (2 d + p))`` so that the RMS over all components
equals the RMS over the ``2 d`` controlled ones.

Gradients with respect to tensor ``t_span`` entries (0-dim or ``(batch,)``) are
``dL/dt1 = dL/dy(t1) . f(t1, y(t1))`` and ``dL/dt0 = -a(t0) . f(t0, y0)``.

Not supported (documented limitations): gradients with respect to ``t_eval`` (treated as
constants), gradients with respect to tensors in ``args`` (an ``args`` tensor that requires
grad raises ``NotImplementedError`` rather than leaving its gradient silently unset), events
(``NotImplementedError``), dense output. Gradients of samples that failed in the forward pass
(``throw=False``) are meaningless.
"""

from __future__ import annotations

import dataclasses
import dis
import functools
import math
import types
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .status import SolveError, Status

__all__ = ["solve_adjoint"]

# Up to this many active samples, per-sample parameter gradients come from a loop of plain
# backward passes instead of torch.func.vmap (see _make_vjp).
_LOOP_MAX_BATCH = 8

_OPTION_KEYS = ("norm", "rtol", "atol", "method", "adjoint_params", "max_steps")


def solve_adjoint(
    f,
    y0: Tensor,
    t_span,
    *,
    method="dopri5",
    rtol=1e-6,
    atol=1e-8,
    t_eval=None,
    max_steps: int = 10_000,
    throw: bool = True,
    adjoint_options: dict | None = None,
    event=None,
    dense_output: bool = False,
    args=None,
    **rest,
):
    """Solve like :func:`solvers.ode.solve` and differentiate by the backsolve adjoint.

    Called by ``ode.solve(..., adjoint=True)``; all arguments mean what they mean there.

    **Arguments:**

    - `f`, `y0`, `t_span`, `method`, `rtol`, `atol`, `t_eval`, `max_steps`, `throw`, `args` and
      the step-size options in `rest` (``dt``, ``first_step``, ``dt_min``, ``dt_max``,
      ``controller``, ``compact``): as in :func:`solvers.ode.solve`; they configure the forward
      solve, and the backward solve unless overridden.
    - `adjoint_options`: optional dict with keys
        - ``"norm"``: ``"seminorm"`` (error of the backward solve over ``y`` and ``a`` only) or
          ``"full"``/``None`` (over the whole augmented state; the default);
        - ``"rtol"``, ``"atol"``, ``"method"``, ``"max_steps"``: overrides for the backward solve;
        - ``"adjoint_params"``: the tensors to differentiate (default: ``f.parameters()`` that
          require grad if ``f`` is an ``nn.Module``, else none).
    - `event`, `dense_output`: not supported with the adjoint (``NotImplementedError``).

    **Returns:** the forward ``Solution`` whose ``y`` (and ``ys``) carry gradients to `y0` and
    the adjoint parameters. ``sol.adjoint_stats`` is a dict filled by the backward pass:
    ``"nfe"`` (per-sample augmented-field evaluations summed over segments), ``"n_steps"``,
    ``"n_segments"``.

    **Raises:** ``NotImplementedError`` for events or dense output; ``ValueError``/``TypeError``
    for unknown or malformed `adjoint_options`.

    **References:** Chen et al. 2018 (NeurIPS), Kidger, Chen & Lyons 2021 (ICML).
    """
    from . import solve  # lazy: solvers.ode imports this module lazily too

    if event is not None:
        raise NotImplementedError(
            "solvers.ode.adjoint: events are not supported with adjoint=True; use the default "
            "backpropagation through the solver (adjoint=False) for gradients through event times"
        )
    if dense_output:
        raise NotImplementedError(
            "solvers.ode.adjoint: dense_output is not supported with adjoint=True "
            "(the interpolant would carry no gradient); use t_eval instead"
        )
    if torch.is_grad_enabled() and args is not None and any(
            isinstance(a, Tensor) and a.requires_grad
            for a in (args if isinstance(args, tuple) else (args,))):
        # The backward pass does not propagate into args: say so rather than leave their
        # .grad silently unset.
        raise NotImplementedError(
            "solvers.ode.adjoint: gradients with respect to tensors in args are not computed "
            "with adjoint=True (an args tensor requires grad); detach it, make it a parameter "
            "of f (an nn.Module), or use adjoint=False")
    rest.pop("adjoint", None)
    if not isinstance(y0, Tensor):
        raise TypeError(f"solve_adjoint: y0 must be a tensor, got {type(y0).__name__}")
    opts = _parse_options(adjoint_options, f, method, rtol, atol, max_steps)

    spec = _Spec(
        solve=solve, f=f, y0=y0, t_span=t_span, t_eval=t_eval, args=args,
        forward_kwargs=dict(method=method, rtol=rtol, atol=atol, max_steps=max_steps,
                            throw=throw, **rest),
        backward_kwargs={k: v for k, v in rest.items() if k != "first_step"},
        opts=opts,
    )
    if not isinstance(t_span, (tuple, list)) or len(t_span) != 2:
        raise ValueError("solve_adjoint: t_span must be a pair (t0, t1)")
    t0, t1 = (t if isinstance(t, Tensor) else None for t in t_span)
    outputs = _BacksolveFunction.apply(spec, y0, t0, t1, *opts["params"])
    sol = spec.solution
    y = outputs[0]
    ys = outputs[1] if len(outputs) > 1 else sol.ys
    return _with_outputs(sol, y, ys, spec.stats)


# ----------------------------------------------------------------------------------------------


@dataclass
class _Spec:
    solve: object
    f: object
    y0: Tensor
    t_span: object
    t_eval: object
    args: object
    forward_kwargs: dict
    backward_kwargs: dict
    opts: dict
    solution: object = None
    stats: dict = field(default_factory=dict)


def _parse_options(adjoint_options, f, method, rtol, atol, max_steps) -> dict:
    options = dict(adjoint_options or {})
    unknown = sorted(set(options) - set(_OPTION_KEYS))
    if unknown:
        raise ValueError(
            f"adjoint_options: unknown key(s) {unknown}; allowed keys are {list(_OPTION_KEYS)}"
        )
    norm = options.get("norm", None)
    if norm not in (None, "full", "seminorm"):
        raise ValueError(f"adjoint_options['norm'] must be 'seminorm', 'full' or None, got {norm!r}")
    params = options.get("adjoint_params", None)
    if params is None:
        if not isinstance(f, nn.Module) and torch.is_grad_enabled():
            captured = [name for name, _ in reachable_grad_tensors(f)]
            if captured:
                raise ValueError(
                    f"adjoint=True: f is not an nn.Module and uses tensors requiring grad "
                    f"({', '.join(captured)}), which the adjoint would leave without gradient: "
                    "it differentiates the parameters of an nn.Module f, or the tensors given "
                    "as adjoint_options={'adjoint_params': [...]} (an empty list for none)")
        params = [p for p in f.parameters() if p.requires_grad] if isinstance(f, nn.Module) else []
    else:
        params = list(params)
        for i, p in enumerate(params):
            if not isinstance(p, Tensor):
                raise TypeError(
                    f"adjoint_options['adjoint_params'][{i}] must be a tensor, got {type(p).__name__}"
                )
    # The same tensor listed twice would get its gradient twice.
    seen, unique = set(), []
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            unique.append(p)
    max_steps_b = options.get("max_steps", max_steps)
    if not isinstance(max_steps_b, int) or max_steps_b <= 0:
        raise ValueError(f"adjoint_options['max_steps'] must be a positive int, got {max_steps_b!r}")
    return {
        "seminorm": norm == "seminorm",
        "rtol": options.get("rtol", rtol),
        "atol": options.get("atol", atol),
        "method": options.get("method", method),
        "max_steps": max_steps_b,
        "params": unique,
    }


_ATOMS = (str, bytes, int, float, complex, bool, type(None), type, types.ModuleType,
          types.BuiltinFunctionType, torch.dtype, torch.device)


def reachable_grad_tensors(*roots) -> list:
    """``[(name, tensor)]``: the tensors requiring grad that calling `roots` can use, each once,
    in a fixed order, named by the path that reached them.

    Walks the parameters of every :class:`nn.Module`, and from any object its attributes (and
    slots), the items of lists, tuples, sets and dicts, bound methods (their object: ``self``),
    ``functools.partial`` (function, arguments) and plain functions (closure cells, defaults and
    the globals their code loads, ``LOAD_GLOBAL``, also in nested functions). Classes, python
    modules, builtins and torch's own functions are not entered. Best effort: what is reached
    only through other routes (e.g. class attributes, C extensions) is not found.
    """
    seen, seen_t, out = set(), set(), []

    def join(name, part):
        return f"{name}.{part}" if name else str(part)

    def add(name, t):
        if t.requires_grad and id(t) not in seen_t:
            seen_t.add(id(t))
            out.append((name, t))

    def loaded_globals(code):
        names = [ins.argval for ins in dis.get_instructions(code) if ins.opname == "LOAD_GLOBAL"]
        for c in code.co_consts:
            if isinstance(c, types.CodeType):
                names += loaded_globals(c)
        return names

    def visit(o, name, depth=0):
        if isinstance(o, _ATOMS) or id(o) in seen or depth > 50:
            return
        seen.add(id(o))
        if isinstance(o, Tensor):
            add(name or "tensor", o)
            return
        if not isinstance(o, nn.Module) and _from_torch(o):
            return  # torch's own functions and objects (e.g. F.cross_entropy) hold no weights
        children = []
        if isinstance(o, nn.Module):
            for pn, p in o.named_parameters():
                add(join(name, pn), p)
        if isinstance(o, (list, tuple, set, frozenset)):
            children = [(f"{name}[{i}]", c) for i, c in enumerate(o)]
        elif isinstance(o, dict):
            children = [(f"{name}[{k!r}]", v) for k, v in o.items()]
        elif isinstance(o, types.MethodType):
            children = [(join(name, "self"), o.__self__), (name, o.__func__)]
        elif isinstance(o, functools.partial):
            children = [(name, o.func)]
            children += [(join(name, f"partial argument {i}"), v) for i, v in enumerate(o.args)]
            children += [(join(name, f"partial argument {k}"), v) for k, v in o.keywords.items()]
        elif isinstance(o, types.FunctionType):
            for var, cell in zip(o.__code__.co_freevars, o.__closure__ or ()):
                try:
                    children.append((join(name, var), cell.cell_contents))
                except ValueError:  # an empty cell
                    pass
            children += [(join(name, f"default {i}"), v) for i, v in enumerate(o.__defaults__ or ())]
            children += [(join(name, k), v) for k, v in (o.__kwdefaults__ or {}).items()]
            glob = o.__globals__
            children += [(join(name, g), glob[g]) for g in loaded_globals(o.__code__) if g in glob]
        if hasattr(o, "__dict__") and not isinstance(o, types.FunctionType):
            owner = name or type(o).__name__
            d = vars(o)
            if isinstance(o, nn.Module):  # parameters are done; submodules hold the rest
                children += [(join(owner, k), v) for k, v in d.items()
                             if k not in ("_parameters", "_buffers", "_modules")]
                children += [(join(owner, k), v) for k, v in d.get("_modules", {}).items()]
            else:
                children += [(join(owner, k), v) for k, v in d.items()]
        for slot in getattr(type(o), "__slots__", ()):
            if isinstance(slot, str) and hasattr(o, slot):
                children.append((join(name, slot), getattr(o, slot)))
        for child_name, c in children:
            visit(c, child_name, depth + 1)

    for i, o in enumerate(roots):
        visit(o, "" if len(roots) == 1 else f"arg {i}")
    return out


def _from_torch(o) -> bool:
    mod = getattr(o, "__module__", None) if isinstance(o, types.FunctionType) else \
        type(o).__module__
    return isinstance(mod, str) and (mod == "torch" or mod.startswith("torch."))


def _with_outputs(sol, y, ys, stats):
    if dataclasses.is_dataclass(sol):
        try:
            new = dataclasses.replace(sol, y=y, ys=ys)
        except TypeError:  # init=False fields: fall back to attribute assignment
            new = sol
            new.y, new.ys = y, ys
    else:
        new = sol
        new.y, new.ys = y, ys
    try:
        new.adjoint_stats = stats
    except (AttributeError, dataclasses.FrozenInstanceError):  # pragma: no cover
        object.__setattr__(new, "adjoint_stats", stats)
    return new


class _BacksolveFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, spec: _Spec, y0: Tensor, t0, t1, *params: Tensor):
        # Autograd is off inside Function.forward: the forward solve records no graph.
        t_span = tuple(t.detach() if isinstance(t, Tensor) else t for t in spec.t_span)
        sol = spec.solve(spec.f, y0.detach(), t_span, t_eval=spec.t_eval, args=spec.args,
                         adjoint=False, **spec.forward_kwargs)
        spec.solution = sol
        ctx.spec = spec
        ctx.t_shapes = (None if t0 is None else t0.shape, None if t1 is None else t1.shape)
        if sol.ys is not None:
            return sol.y.clone(), sol.ys.clone()
        return (sol.y.clone(),)

    @staticmethod
    def backward(ctx, grad_y, *grad_ys):
        spec = ctx.spec
        params = spec.opts["params"]
        # ctx.spec is kept (not released) so that backward can run twice with retain_graph
        # (gradcheck does).
        grad_y0, grad_params = _backsolve(spec, grad_y, grad_ys[0] if grad_ys else None)
        grad_t0 = grad_t1 = None
        if ctx.needs_input_grad[2]:
            # dL/dt0 = -a(t0) . f(t0, y0): moving the start moves the whole trajectory.
            f0 = _eval_field(spec, _per_sample(spec.t_span[0], grad_y0.shape[0], grad_y0),
                             spec.y0.detach())
            grad_t0 = _reduce_time_grad(-(grad_y0 * f0).flatten(1).sum(1), spec.t_span[0])
        if ctx.needs_input_grad[3] and grad_y is not None:
            # dL/dt1 = dL/dy(t1) . f(t1, y(t1)) for samples that reached t1.
            sol = spec.solution
            f1 = _eval_field(spec, sol.t.detach(), sol.y.detach())
            g1 = (grad_y * f1).flatten(1).sum(1)
            g1 = torch.where(sol.status.to(g1.device) == 0, g1, torch.zeros_like(g1))
            grad_t1 = _reduce_time_grad(g1, spec.t_span[1])
        return (None, grad_y0, grad_t0, grad_t1,
                *[g.to(p.dtype) for g, p in zip(grad_params, params)])


# ----------------------------------------------------------------------------------------------


def _per_sample(t, batch, like):
    if isinstance(t, Tensor):
        t = t.detach().to(dtype=like.dtype, device=like.device)
        return t.expand(batch).clone() if t.dim() == 0 else t.clone()
    return torch.full((batch,), float(t), dtype=like.dtype, device=like.device)


def _tolerance_vector(tol, d, n_params, state_shape, like, seminorm: bool) -> Tensor | float:
    """Per-component tolerance over the augmented state ``[y, a, a_theta]``."""
    n_total = 2 * d + n_params
    if not seminorm and not isinstance(tol, Tensor):
        return tol
    if isinstance(tol, Tensor):
        t_y = tol.detach().to(like).expand(state_shape).reshape(d)
        t_p = t_y.min().expand(n_params)
    else:
        t_y = torch.full((d,), float(tol), dtype=like.dtype, device=like.device)
        t_p = torch.full((n_params,), float(tol), dtype=like.dtype, device=like.device)
    if seminorm and n_params > 0:
        # Scaled error of the parameter part ~ 0; rescale the rest so that the RMS over all
        # 2d + p components equals the RMS over the 2d controlled ones.
        t_y = t_y * math.sqrt(2 * d / n_total)
        t_p = torch.full_like(t_p, torch.finfo(like.dtype).max ** 0.5)
    return torch.cat([t_y, t_y, t_p])


def _backsolve(spec: _Spec, grad_y, grad_ys):
    sol = spec.solution
    params = spec.opts["params"]
    y_final = sol.y.detach()
    batch = y_final.shape[0]
    state_shape = tuple(y_final.shape[1:])
    d = math.prod(state_shape)
    n_params = sum(p.numel() for p in params)
    like = y_final

    a = grad_y.detach().to(like.dtype) if grad_y is not None else torch.zeros_like(y_final)
    a_theta = like.new_zeros(batch, n_params)
    y = y_final
    t_start = _per_sample(spec.t_span[0], batch, like)
    t_cur = sol.t.detach().to(like.dtype).clone()

    vjp = _make_vjp(spec.f, params, spec.args is not None)
    seminorm = spec.opts["seminorm"]
    rtol = _tolerance_vector(spec.opts["rtol"], d, n_params, state_shape, like, seminorm)
    atol = _tolerance_vector(spec.opts["atol"], d, n_params, state_shape, like, seminorm)
    stats = spec.stats
    stats.update(nfe=torch.zeros(batch, dtype=torch.long), n_steps=torch.zeros(batch, dtype=torch.long),
                 n_segments=0)

    def aug_f(t, z, *extra):
        m = z.shape[0]
        y_ = z[:, :d].reshape(m, *state_shape)
        a_ = z[:, d: 2 * d].reshape(m, *state_shape)
        with torch.enable_grad():
            fy, vy, vp = vjp(t, y_, a_, extra[0] if extra else None)
        parts = [fy.reshape(m, d), -vy.reshape(m, d)]
        if n_params:
            parts.append(-vp)
        return torch.cat(parts, 1).to(z.dtype)

    def segment(t_from, t_to, y, a, a_theta):
        active = t_to != t_from
        if not bool(active.any()):
            return y, a, a_theta
        idx = active.nonzero().squeeze(1)
        z = torch.cat([y[idx].reshape(-1, d), a[idx].reshape(-1, d), a_theta[idx]], 1)
        args = _gather_args(spec.args, idx)
        kwargs = dict(spec.backward_kwargs)
        dt = kwargs.get("dt")
        if isinstance(dt, Tensor) and dt.dim() == 1:  # per-sample fixed steps: this segment's
            kwargs["dt"] = dt[idx]
        sol_b = spec.solve(aug_f, z, (t_from[idx], t_to[idx]), method=spec.opts["method"],
                           rtol=rtol, atol=atol, max_steps=spec.opts["max_steps"], throw=False,
                           args=args, adjoint=False, **kwargs)
        bad = (sol_b.status >= int(Status.MAX_STEPS)).nonzero().flatten().tolist()
        if bad:
            raise SolveError(_backward_failure(sol_b, idx, bad, t_from), sol_b)
        zf = sol_b.y.detach()
        stats["n_segments"] += 1
        for key in ("nfe", "n_steps"):
            if key in sol_b.stats:
                stats[key][idx.cpu()] += sol_b.stats[key].detach().cpu().long()
        y, a, a_theta = y.clone(), a.clone(), a_theta.clone()
        y[idx] = zf[:, :d].reshape(-1, *state_shape)
        a[idx] = zf[:, d: 2 * d].reshape(-1, *state_shape)
        a_theta[idx] = zf[:, 2 * d:]
        return y, a, a_theta

    if grad_ys is not None and sol.ys is not None:
        t_eval = spec.t_eval
        t_eval = t_eval.detach() if isinstance(t_eval, Tensor) else torch.as_tensor(t_eval)
        t_eval = t_eval.to(dtype=like.dtype, device=like.device)
        if t_eval.dim() == 1:
            t_eval = t_eval.expand(batch, -1)
        ys = sol.ys.detach()
        # A sample that failed stopped before its later t_eval points (NaN outputs, zero
        # gradients): its backward pass starts where it stopped, not beyond.
        direction = torch.sign(_per_sample(spec.t_span[1], batch, like) - t_start)
        for k in reversed(range(t_eval.shape[1])):
            target = t_eval[:, k]
            target = torch.where(direction * (target - sol.t.detach()) > 0, t_cur, target)
            y, a, a_theta = segment(t_cur, target, y, a, a_theta)
            # Restart y from the stored forward value: the backward re-integration of y drifts.
            y = torch.where(torch.isfinite(ys[:, k]), ys[:, k], y)
            a = a + grad_ys[:, k].to(like.dtype)
            t_cur = target
    y, a, a_theta = segment(t_cur, t_start, y, a, a_theta)

    grad_params = []
    total = a_theta.sum(0)
    offset = 0
    for p in params:
        grad_params.append(total[offset: offset + p.numel()].reshape(p.shape))
        offset += p.numel()
    return a.to(spec.y0.dtype), grad_params


def _backward_failure(sol_b, idx, bad, t_from) -> str:
    """The message for a failed backward (adjoint) solve, in the batch's sample numbers."""
    lines = [f"adjoint=True: the backward solve of the augmented system failed for "
             f"{len(bad)} sample(s), after the forward solve:"]
    for j in bad[:10]:
        lines.append(f"  sample {int(idx[j])}: {Status(int(sol_b.status[j])).name} at "
                     f"t={float(sol_b.t[j]):.6g} (integrating back from t={float(t_from[idx[j]]):.6g})")
    if len(bad) > 10:
        lines.append(f"  ... and {len(bad) - 10} more")
    lines.append("The backsolve re-integrates y backwards, which can leave the region where f "
                 "is defined or need more steps: tighten or loosen adjoint_options 'rtol'/'atol', "
                 "raise adjoint_options 'max_steps', or use adjoint=False (backpropagation "
                 "through the forward steps).")
    return "\n".join(lines)


def _eval_field(spec: _Spec, t: Tensor, y: Tensor) -> Tensor:
    with torch.no_grad():
        out = spec.f(t, y) if spec.args is None else spec.f(t, y, spec.args)
    return out.detach().to(y.dtype)


def _reduce_time_grad(g: Tensor, t: Tensor) -> Tensor:
    """Per-sample time gradient -> the shape of the time argument (0-dim: summed)."""
    g = g.to(t.dtype)
    return g.sum() if t.dim() == 0 else g.reshape(t.shape)


def _gather_args(args, idx):
    if args is None:
        return None
    if isinstance(args, Tensor):
        return args[idx]
    return type(args)(x[idx] if isinstance(x, Tensor) else x for x in args)


def _make_vjp(f, params, has_args):
    """Return ``vjp(t, y, a, args) -> (f(t, y), a^T df/dy, per-sample a^T df/dtheta (m, P))``."""
    names = _module_param_names(f, params)
    state = {"func_ok": names is not None}

    def call(t, y, args, fn=f):
        return fn(t, y, args) if has_args else fn(t, y)

    def vjp_func(t, y, a, args):
        from torch.func import functional_call, vjp, vmap

        pdict = {n: p.detach() for n, p in zip(names, params)}

        def one(p, t_i, y_i, a_i, args_i):
            def g(y_, p_):
                extra = None if args_i is None else _unsqueeze_args(args_i)
                out = functional_call(f, p_, (t_i[None], y_[None]) + ((extra,) if has_args else ()))
                return out[0]

            out, pull = vjp(g, y_i, p)
            gy, gp = pull(a_i)
            return out, gy, gp

        in_dims = (None, 0, 0, 0, 0 if args is not None else None)
        out, gy, gp = vmap(one, in_dims=in_dims)(pdict, t, y.detach(), a.detach(), args)
        m = y.shape[0]
        vp = torch.cat([gp[n].reshape(m, -1) for n in names], 1) if names else y.new_zeros(m, 0)
        return out, gy, vp

    def vjp_autograd(t, y, a, args, loop: bool):
        y_ = y.detach().requires_grad_(True)
        fy = call(t, y_, args)
        m = y.shape[0]
        if not params:
            (gy,) = torch.autograd.grad(fy, y_, a, allow_unused=True)
            gy = torch.zeros_like(y) if gy is None else gy
            return fy.detach(), gy, y.new_zeros(m, 0)
        # a^T df/dy summed over the batch is already per sample (f is batch-elementwise).
        (gy,) = torch.autograd.grad(fy, y_, a, retain_graph=True, allow_unused=True)
        gy = torch.zeros_like(y) if gy is None else gy
        # Row i of the batched cotangent is a with every sample but i zeroed: its parameter
        # gradient is sample i's.
        eye = torch.eye(m, dtype=a.dtype, device=a.device)
        cot = eye.reshape(m, m, *([1] * (a.dim() - 1))) * a.unsqueeze(0)
        gps = None
        if not loop:
            try:
                gps = torch.autograd.grad(fy, params, cot, is_grads_batched=True,
                                          retain_graph=True, allow_unused=True)
            except RuntimeError:  # an op without a batching rule: fall back to the loop
                gps = None
        if gps is None:
            rows = [torch.autograd.grad(fy, params, cot[i], retain_graph=i < m - 1,
                                        allow_unused=True) for i in range(m)]
            gps = [torch.stack([r[j] if r[j] is not None else torch.zeros_like(p) for r in rows])
                   for j, p in enumerate(params)]
        vp = torch.cat(
            [(g if g is not None else torch.zeros(m, *p.shape, dtype=y.dtype, device=y.device))
             .reshape(m, -1).to(y.dtype) for g, p in zip(gps, params)], 1)
        return fy.detach(), gy, vp

    def vjp_dispatch(t, y, a, args):
        # Small batches: one plain backward per sample is cheapest (torch.func.vmap costs ~1 ms
        # per call, and its first use imports a large part of torch, ~3 s).
        if y.shape[0] <= _LOOP_MAX_BATCH:
            return vjp_autograd(t, y, a, args, loop=True)
        if state["func_ok"]:
            try:
                return vjp_func(t, y, a, args)
            except (RuntimeError, NotImplementedError, TypeError):
                # f is not vmap-compatible (data-dependent control flow, .item(), ...).
                state["func_ok"] = False
        return vjp_autograd(t, y, a, args, loop=False)

    return vjp_dispatch


def _unsqueeze_args(args_i):
    if isinstance(args_i, Tensor):
        return args_i[None]
    return type(args_i)(x[None] if isinstance(x, Tensor) else x for x in args_i)


def _module_param_names(f, params):
    """Names of `params` inside module `f`, or None if `f` is no Module or lacks one of them."""
    if not isinstance(f, nn.Module):
        return None
    by_id = {id(p): n for n, p in f.named_parameters()}
    names = [by_id.get(id(p)) for p in params]
    return None if any(n is None for n in names) else names
