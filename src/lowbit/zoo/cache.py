"""The on-disk cache of zoo models trained here (FashionCNN, DigitsCNN).

Training is deterministic, so a cached state dict is exactly what training
would produce again; the cache only saves time. Files are written atomically
(temporary file, then rename) so an interrupted run never leaves half a file,
and a file that cannot be read back is retrained and overwritten, never used.

Location: the ``cache_dir`` argument, else ``$LOWBIT_CACHE/zoo``, else
``~/.cache/lowbit/zoo``.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from lowbit.zoo.errors import ZooError


def resolve_cache_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """The directory trained zoo weights are cached in (not created here).

    Args:
        override: use this directory instead of the default.

    Returns:
        ``override`` if given, else ``$LOWBIT_CACHE/zoo`` if the environment
        variable is set, else ``~/.cache/lowbit/zoo``.

    Example:
        >>> resolve_cache_dir("/tmp/x")
        PosixPath('/tmp/x')
    """
    if override is not None:
        return Path(override).expanduser()
    root = os.environ.get("LOWBIT_CACHE")
    if root:
        return Path(root).expanduser() / "zoo"
    return Path.home() / ".cache" / "lowbit" / "zoo"


def save_state_dict(model: nn.Module, path: Path) -> None:
    """Write ``model.state_dict()`` to ``path`` atomically.

    Args:
        model: the model whose state is saved.
        path: destination file; its directory is created if needed.

    Example:
        >>> save_state_dict(nn.Linear(2, 2), Path(tempfile.mkdtemp()) / "w.pt")
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    except OSError as exc:
        raise ZooError(
            f"cannot write the zoo cache in {path.parent} ({exc}); pass cache_dir= "
            "or set LOWBIT_CACHE to a writable directory"
        ) from exc
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(model.state_dict(), f)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a cache is shareable like any file
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_or_train(model: nn.Module, path: Path, train: Callable[[nn.Module], None]) -> bool:
    """Fill ``model`` from the cache file, or train it and cache the result.

    Args:
        model: a freshly built model of the right architecture.
        path: the cache file for this exact (architecture, recipe) pair.
        train: trains ``model`` in place; called only when the cache misses.

    Returns:
        True if the weights came from the cache, False if ``train`` ran.

    Example:
        >>> m = nn.Linear(2, 2)
        >>> load_or_train(m, Path(tempfile.mkdtemp()) / "w.pt", lambda m: None)
        False
    """
    if path.is_file():
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(state, strict=True)
            return True
        except Exception as exc:  # any unreadable file is rebuilt, never trusted
            warnings.warn(
                f"ignoring unreadable cached weights {path} ({type(exc).__name__}: {exc}); "
                "retraining and overwriting it",
                RuntimeWarning,
                stacklevel=2,
            )
    train(model)
    save_state_dict(model, path)
    return False
