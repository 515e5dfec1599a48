"""Safe checkpoint helpers: atomic saves and loads that fail with clear messages.

- :func:`save` writes to a temporary file in the target directory, flushes it to disk and
  renames it over the target (``os.replace`` is atomic on POSIX and Windows), so a crash or a
  full disk never leaves a half-written checkpoint under the final name. The file keeps the
  mode of the one it replaces (else ``0o666 & ~umask``), and a symbolic link is written through
  to its target, so the link stays. :func:`atomic_write` (with :func:`file_mode`) is that
  mechanism for any writer; figures and demo outputs use it too.
- :func:`load` turns the many ways a file can be unreadable (truncated zip, not a torch file,
  pickled code refused by ``weights_only``) into one :class:`CheckpointError` naming the file.
- :func:`load_state_dict` checks keys and shapes before touching the model and reports every
  missing key, unexpected key and shape mismatch at once.
- :func:`save_model` / :func:`load_model` store `model.config` next to the weights so that
  ``create_model(**config)`` rebuilds the architecture (e.g. after pruning).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping

import torch
from torch import Tensor, nn

__all__ = ["CheckpointError", "save", "load", "load_state_dict", "save_model", "load_model",
           "compare_state_dicts", "atomic_write", "file_mode"]


class CheckpointError(ValueError):
    """A checkpoint file is unreadable or does not fit the model."""


def save(obj, path: str | os.PathLike) -> None:
    """Atomically save `obj` with ``torch.save`` to `path`.

    **Arguments:** `obj`: anything ``torch.save`` accepts; `path`: destination file (its
    directory must exist).

    The new file keeps the permission bits of the file it replaces, or gets
    ``0o666 & ~umask`` (what ``open()`` would give) when there was none. When `path` is a
    symbolic link (e.g. ``latest.pt -> run3.pt``) the file it points to is replaced and the link
    stays.

    **Raises:** `FileNotFoundError` if the directory does not exist; the original exception if
    serialisation fails (the destination is then untouched and no temporary file is left).
    """
    atomic_write(path, lambda f: torch.save(obj, f), suffix=".pt", caller="checkpoint.save")


def file_mode(path: str | os.PathLike) -> int:
    """The permission bits a file written to `path` should get: those of the file it replaces
    (followed through symbolic links), else ``0o666 & ~umask`` (what ``open()`` would give)."""
    try:
        return os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        return 0o666 & ~_umask()


def atomic_write(path: str | os.PathLike, write, *, binary: bool = True, suffix: str = "",
                 caller: str = "atomic_write") -> None:
    """Write a file atomically: `write(f)` fills a temporary file in the target's directory,
    which is flushed, fsynced, given :func:`file_mode` and renamed over `path`.

    Used by :func:`save`, :func:`odedepth.plots.save_figure` and the demos. A symbolic link at
    `path` is written through to the file it names. On any failure (KeyboardInterrupt included)
    the destination is untouched and the temporary file is removed.

    **Raises:** `FileNotFoundError` (prefixed with `caller`) if the directory does not exist.
    """
    path = os.fspath(path)
    # write through symbolic links (also chains and dangling ones) to the file they name
    target = os.path.realpath(path) if os.path.islink(path) else path
    directory = os.path.dirname(os.path.abspath(target))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{caller}: directory {directory!r} does not exist")
    mode = file_mode(target)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=directory)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # mkstemp creates 0o600
        os.replace(tmp, target)
    except BaseException:
        # Never leave the temporary behind, whatever went wrong (KeyboardInterrupt included).
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    """The process umask, read without changing it where the system allows (Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (not atomic across threads)
    os.umask(mask)
    return mask


def load(path: str | os.PathLike, map_location="cpu", weights_only: bool = True):
    """Load a checkpoint written by :func:`save` (or any ``torch.save`` file).

    **Arguments:** `path`; `map_location` (default CPU, so GPU checkpoints load anywhere);
    `weights_only` (default True: tensors and plain containers only, no arbitrary code).

    **Returns:** the stored object.

    **Raises:** `FileNotFoundError` for a missing file, :class:`CheckpointError` for an empty,
    truncated or otherwise unreadable one.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint.load: no such file {path!r}")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"checkpoint.load: {path!r} is empty (0 bytes)")
    try:
        return torch.load(path, map_location=map_location, weights_only=weights_only)
    except Exception as exc:  # torch raises RuntimeError, pickle/EOF/zip errors, ... by format
        msg = str(exc)
        lines = [ln.strip() for ln in msg.strip().splitlines() if ln.strip()]
        # torch's weights_only failures open with the same generic paragraph whether the file
        # holds a refused class or is plain garbage; the specific cause is on a later line.
        detail = next((ln for ln in lines if "Unsupported" in ln), lines[0] if lines else "")
        hint = (" (it holds objects that weights_only=True refuses; pass weights_only=False "
                "only for files you trust)") if "Unsupported global" in msg else ""
        raise CheckpointError(
            f"checkpoint.load: {path!r} is corrupt or not a torch checkpoint{hint} "
            f"({type(exc).__name__}: {detail})"
        ) from exc


def _extract_state_dict(obj) -> Mapping[str, Tensor]:
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(k, str) for k in obj):
        raise CheckpointError(f"expected a state_dict (a mapping from names to tensors), got "
                              f"{type(obj).__name__}")
    return obj


def compare_state_dicts(expected: Mapping[str, Tensor], given: Mapping[str, Tensor]):
    """`(missing, unexpected, mismatched)` between two state_dicts; `mismatched` lists
    `(key, expected_shape, given_shape)`."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    mismatched = [(k, tuple(expected[k].shape), tuple(given[k].shape)) for k in expected
                  if k in given and isinstance(given[k], Tensor)
                  and tuple(expected[k].shape) != tuple(given[k].shape)]
    return missing, unexpected, mismatched


def _fmt(items, n=8):
    items = list(items)
    more = f" ... (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(map(str, items[:n])) + more


def load_state_dict(model: nn.Module, source, strict: bool = True):
    """Load weights into `model` after checking every key and shape.

    **Arguments:**

    - `model`: the module to fill.
    - `source`: a file path (read with :func:`load`), a state_dict, or a dict holding one under
      `"state_dict"` (as written by :func:`save_model`).
    - `strict`: if True (default) missing or unexpected keys are errors; shape mismatches are
      errors either way.

    **Returns:** `(missing, unexpected)` key lists (empty when strict).

    **Raises:** :class:`CheckpointError` listing the missing keys, unexpected keys and shape
    mismatches (nothing is loaded in that case).
    """
    if isinstance(source, (str, os.PathLike)):
        source = load(source)
    sd = _extract_state_dict(source)
    expected = dict(model.state_dict())
    # buffers that are None until fitted (e.g. FreeBoundaryRule's) take the incoming shapes
    # (all of a module's or none: one given makes the others missing)
    for name, mod in model.named_modules():
        lazy = [b for b in getattr(mod, "_lazy_buffers", ()) if mod._buffers.get(b) is None]
        keys = [f"{name}.{b}" if name else b for b in lazy]
        if any(k in sd for k in keys):
            for k in keys:
                expected.setdefault(k, sd[k] if k in sd else torch.empty(0))
    missing, unexpected, mismatched = compare_state_dicts(expected, sd)
    problems = []
    not_tensors = [f"{k} ({type(v).__name__})" for k, v in sd.items() if not isinstance(v, Tensor)]
    if not_tensors:  # torch would copy the other keys first and then fail: a half-loaded model
        problems.append(f"values that are not tensors: {_fmt(not_tensors)}")
    if mismatched:
        problems.append("shape mismatches " + _fmt(
            f"{k}: model {a} vs checkpoint {b}" for k, a, b in mismatched))
    if strict and missing:
        problems.append(f"missing keys ({len(missing)}): {_fmt(missing)}")
    if strict and unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {_fmt(unexpected)}")
    if problems:
        raise CheckpointError(f"load_state_dict into {type(model).__name__}: " + "; ".join(problems))
    model.load_state_dict(sd, strict=strict)
    return missing, unexpected


def save_model(model: nn.Module, path, **extra) -> None:
    """Atomically save `{"config": model.config, "state_dict": ..., **extra}`."""
    config = getattr(model, "config", None)
    if config is None:
        raise ValueError(f"save_model: {type(model).__name__} has no .config; use save()")
    save({"config": dict(config), "state_dict": model.state_dict(), **extra}, path)


def load_model(path, map_location="cpu") -> nn.Module:
    """Rebuild a model saved by :func:`save_model` with ``create_model(**config)`` and load it."""
    from .models import create_model

    obj = load(path, map_location=map_location)
    if not isinstance(obj, Mapping) or "config" not in obj or "state_dict" not in obj:
        raise CheckpointError(f"load_model: {os.fspath(path)!r} was not written by save_model "
                              "(needs 'config' and 'state_dict')")
    model = create_model(**obj["config"])
    load_state_dict(model, obj["state_dict"], strict=True)
    return model
