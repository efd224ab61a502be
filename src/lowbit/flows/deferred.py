"""Deferred observation: a calibration batch's activations are observed after its forward pass.

Why: an observer update run between two layers starts cold (interpreter, caches and
branch predictors full of the layer's work), and the next layer starts cold after it.
The same updates run back to back once the batch's forward pass is done cost less,
and the forward pass runs faster (calibration cost on MiniLM: ``benchmarks/ptq.py
--only calibration``).

It changes when observers see a batch, never what they see: each observer gets the
same tensors in the same order as it would at once, so its state is bit for bit the
same. What could make a tensor differ by the end of the batch is a later in-place
write (``nn.ReLU(inplace=True)`` on a layer's output, ``out += identity`` in a
residual block). torch bumps a tensor's version counter on every in-place write (to
it or to any view of its storage), so:

- the first batch is observed at once, as without deferral, while its tensors are
  watched: a quantizer whose tensor is written later holds back a copy from then on;
- later batches are deferred, and checked before any observer sees them. A tensor
  written anyway (a write that depends on the data) drops the batch's observations,
  and the batch runs again with that quantizer's tensor copied;
- deferred tensors stay alive until the batch ends (only those are copied). Past
  `BUDGET_BYTES` in one batch, the ones held so far are observed and deferral stops.

Writes that torch does not count (through ``.data`` or a numpy view) are not seen;
models do not make them to their activations.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from lowbit.errors import CalibrationError
from lowbit.observers.stamp import version as version_of

# Activations held back for one batch, at most: how much longer-lived activations can
# add to the model's own memory during calibration.
BUDGET_BYTES = 256 << 20


class _Rerun(BaseException):
    """Stops a forward pass whose deferred observations were lost to an in-place write.

    A BaseException, so that a model's own ``except Exception`` does not swallow it.
    """


class Deferral:
    """Holds back the observations of ``quantizers`` while a batch runs (see module docs).

    Use as a context manager around the calibration loop and run each batch with `run`;
    ``Quantizer.forward`` offers its tensor to `take`.
    """

    def __init__(self, quantizers: list[nn.Module], budget: int = BUDGET_BYTES) -> None:
        self.quantizers = quantizers
        self.budget = budget
        self.state = "learn"  # "learn" (first batch), "defer", or "off"
        self.copied: set[int] = set()  # ids of quantizers whose tensors are written later
        self.reruns = 0
        self._seen: list[tuple[nn.Module, Tensor, int]] = []
        self._held = 0
        self._last: Tensor | None = None

    def __enter__(self) -> Deferral:
        for quantizer in self.quantizers:
            # past nn.Module.__setattr__: a plain attribute, read once per forward
            object.__setattr__(quantizer, "_deferral", self)
        return self

    def __exit__(self, *exc: object) -> None:
        for quantizer in self.quantizers:
            quantizer.__dict__.pop("_deferral", None)
        self._take_seen()

    def stop(self) -> None:
        """Observe at once from now on (a ``forward_loop`` has no batch boundary to wait for)."""
        self.state = "off"

    def take(self, quantizer: nn.Module, x: Tensor) -> bool:
        """Hold ``x`` back for ``quantizer``; False when the caller must observe it now."""
        if self.state == "off":
            return False
        copy = id(quantizer) in self.copied
        if copy or x is not self._last:  # the query, key and value inputs are one tensor
            self._held += x.numel() * x.element_size()
            if self._held > self.budget:
                self._over_budget()
                return False
        if copy:
            x = x.clone()
        else:
            self._last = x
        self._seen.append((quantizer, x, version_of(x)))
        return self.state == "defer"

    def run(self, run_batch, model: nn.Module, batch: Any) -> None:
        """``run_batch(model, batch)``, then the batch's deferred observations, in order."""
        inputs = _versions(batch)
        while True:
            try:
                run_batch(model, batch)
                seen = self._take_seen()
                written = {id(q) for q, x, version in seen if version_of(x) != version}
                if self.state == "learn":
                    self.copied |= written
                    self.state = "defer"
                    return
                if not written:
                    for quantizer, x, _ in seen:
                        quantizer.observe(x)
                    return
                if written <= self.copied:  # a copy cannot be written: never loop forever
                    raise RuntimeError("internal: a held-back copy changed during the forward pass")
                self.copied |= written
                offenders = [q for q, _, _ in seen if id(q) in written]
            except _Rerun as rerun:
                offenders = rerun.args[0]
            except BaseException:
                self._take_seen()
                raise
            # Nothing of this batch was observed yet (all of it was held back): run it again.
            self._take_seen()
            if _versions(batch) != inputs:
                names = ", ".join(sorted({q.name for q in offenders}))
                raise CalibrationError(
                    f"the model wrote in place to activations after lowbit observed them ({names}) "
                    "and to its own input batch, so the batch cannot run again to observe them. "
                    "Calibrate with a forward_loop, which observes every activation at once: "
                    "calibrate=lambda m: [m(b) for b in batches]"
                )
            self.reruns += 1

    def _over_budget(self) -> None:
        """Observe what is held (when intact) and stop deferring; else rerun the batch."""
        learning, self.state = self.state == "learn", "off"
        seen = self._take_seen()
        if learning:  # these were observed at once
            return
        written = [q for q, x, version in seen if version_of(x) != version]
        if written:
            self.copied |= {id(q) for q in written}
            raise _Rerun(written)
        for quantizer, x, _ in seen:
            quantizer.observe(x)

    def _take_seen(self) -> list[tuple[nn.Module, Tensor, int]]:
        seen, self._seen, self._held, self._last = self._seen, [], 0, None
        return seen


def _versions(batch: Any) -> tuple[tuple[int, int], ...]:
    """Identity and version counter of each tensor of a batch (tensor, tuple / list, or dict)."""
    if isinstance(batch, Tensor):
        items = [batch]
    elif isinstance(batch, dict) or hasattr(batch, "keys"):
        items = list(batch.values())
    elif isinstance(batch, (tuple, list)):
        items = list(batch)
    else:
        items = []
    return tuple((id(t), version_of(t)) for t in items if isinstance(t, Tensor))
