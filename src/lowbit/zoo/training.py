"""A small deterministic training loop and accuracy metric for the zoo's CNNs.

Determinism: the model is initialised and the batches are shuffled from
generators seeded by ``seed`` (the global RNG is saved and restored, so
calling this does not disturb the caller's random state), and training runs on
a fixed number of threads (one by default) because CPU convolution gradients
are summed in a thread-count-dependent order. The trained weights are then
bit-identical from run to run and from machine to machine with the same torch
build and CPU instruction set. One thread is also the robust choice on small
shared CI machines: OpenMP threads that wait on each other slow tiny kernels
down by 10× or more when another process holds a core.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lowbit.errors import InputError


def check_dataset(images: Tensor, labels: Tensor) -> None:
    """Raise `InputError` unless ``images`` [N, ...] and ``labels`` [N] int match.

    Example:
        >>> check_dataset(torch.zeros(2, 1, 8, 8), torch.tensor([0, 1]))
    """
    if images.ndim < 2 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise InputError(
            f"images must be [N, ...] and labels [N]; got {tuple(images.shape)} and "
            f"{tuple(labels.shape)}"
        )
    if images.shape[0] == 0:
        raise InputError("the data set is empty; pass at least one image")
    if labels.dtype not in (torch.int64, torch.int32, torch.uint8):
        raise InputError(f"labels must be integer class indices, got {labels.dtype}")


def fit(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    weight_decay: float = 1e-4,
    num_threads: int = 1,
) -> nn.Module:
    """Train ``model`` in place with AdamW, a one-cycle schedule and cross-entropy.

    Args:
        model: freshly built; it is re-initialised from ``seed`` first.
        images: float inputs [N, C, H, W].
        labels: int64 class indices [N].
        epochs: full passes over the data (at least 1).
        batch_size: images per optimisation step.
        lr: peak learning rate of the one-cycle schedule.
        seed: drives initialisation and shuffling.
        weight_decay: AdamW decoupled weight decay.
        num_threads: torch intra-op threads while training (restored after).

    Returns:
        ``model``, trained, in eval mode.

    Example:
        >>> m = fit(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), torch.randn(8, 1, 2, 2),
        ...         torch.tensor([0, 1] * 4), epochs=1, batch_size=4, lr=1e-2, seed=0)
    """
    check_dataset(images, labels)
    if epochs < 1 or batch_size < 1 or num_threads < 1:
        raise InputError(
            f"epochs, batch_size and num_threads must be >= 1, got {epochs}, {batch_size} "
            f"and {num_threads}"
        )
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        _train(model, images, labels, epochs, batch_size, lr, seed, weight_decay)
    finally:
        torch.set_num_threads(previous_threads)
    return model.eval()


def _train(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    weight_decay: float,
) -> None:
    labels = labels.long()
    n = images.shape[0]
    steps_per_epoch = (n + batch_size - 1) // batch_size
    # the global RNG drives initialisation (and dropout, if any) from `seed`, then is restored
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in model.modules():
            if module is not model and hasattr(module, "reset_parameters"):
                module.reset_parameters()
        # channels-last makes oneDNN's CPU convolutions and batch norm ~2x faster
        fast = torch.channels_last if images.ndim == 4 else torch.preserve_format
        model.to(memory_format=fast)
        images = images.contiguous(memory_format=fast)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.25
        )
        shuffle = torch.Generator().manual_seed(seed + 1)
        loss_fn = nn.CrossEntropyLoss()
        model.train()
        for _ in range(epochs):
            order = torch.randperm(n, generator=shuffle)
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size]
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(model(images[idx]), labels[idx])
                loss.backward()
                opt.step()
                sched.step()
    # hand back plain contiguous weights: later code may .view() them
    model.to(memory_format=torch.contiguous_format)


@torch.no_grad()
def predict(model: nn.Module, images: Tensor, batch_size: int = 1000) -> Tensor:
    """Arg-max class predictions of ``model`` over ``images``, in batches.

    The model is run in eval mode and its train/eval mode is restored after.

    Args:
        model: a classifier returning logits [B, classes].
        images: inputs [N, ...].
        batch_size: images per forward pass.

    Returns:
        int64 predictions [N].

    Example:
        >>> predict(nn.Flatten(), torch.eye(3).reshape(3, 1, 3)).tolist()
        [0, 1, 2]
    """
    if images.ndim < 2 or images.shape[0] == 0:
        raise InputError(f"images must be a non-empty batch [N, ...], got {tuple(images.shape)}")
    was_training = model.training
    model.eval()
    try:
        out = [model(images[i : i + batch_size]).argmax(dim=1) for i in
               range(0, images.shape[0], batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(out)


def evaluate_accuracy(
    model: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 1000
) -> float:
    """Top-1 accuracy of ``model`` on a labelled set.

    Args:
        model: a classifier returning logits [B, classes].
        images: inputs [N, ...].
        labels: class indices [N].
        batch_size: images per forward pass.

    Returns:
        The fraction of correct predictions, in [0, 1].

    Example:
        >>> evaluate_accuracy(nn.Flatten(), torch.eye(2).reshape(2, 1, 2), torch.tensor([0, 0]))
        0.5
    """
    check_dataset(images, labels)
    pred = predict(model, images, batch_size)
    return (pred == labels.to(pred.device).long()).double().mean().item()
