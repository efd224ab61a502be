"""`import lowbit.zoo` stays light: heavy optional packages load only when used."""

from __future__ import annotations

import subprocess
import sys

import lowbit.zoo


def test_import_does_not_pull_heavy_packages():
    code = (
        "import sys, lowbit.zoo; "
        "heavy = ['transformers', 'gguf', 'sklearn', 'skimage', 'sentence_transformers', "
        "'huggingface_hub', 'tokenizers']; "
        "print([m for m in heavy if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.strip() == "[]"


def test_public_names_exist():
    for name in lowbit.zoo.__all__:
        assert hasattr(lowbit.zoo, name), name
    assert issubclass(lowbit.zoo.MissingResourceError, lowbit.zoo.ZooError)
