"""`IntegerReport`: what ran in integers in an integer-only model, and where floats remained."""

from __future__ import annotations

from dataclasses import dataclass, field

from lowbit.nn.integer_overflow import AccumulatorBounds, SaturationReport

# domain of an op: integer arithmetic, a float op (dequantized inputs), or a float/int boundary
DOMAINS = ("int", "float", "boundary")


@dataclass
class OpRecord:
    """One op of the integer model.

    Attributes:
        name: the op's node name in the integer graph.
        op: what it is (``IntConv2d``, ``Requantize``, ``flatten``, ...).
        domain: ``"int"``, ``"float"`` (ran on dequantized inputs) or ``"boundary"``
            (Quantize at an input, Dequantize before a float op or at an output).
        source: the node of the quantized model it comes from.
        detail: parameters, or why the op stayed float.
    """

    name: str
    op: str
    domain: str
    source: str = ""
    detail: str = ""


@dataclass
class IntegerReport:
    """Which ops run in integers, where floats remain, and the overflow analysis.

    Attributes:
        requant: the requantization mode (``"fixed_point"`` or ``"float"``).
        ops: every op in execution order.
        accumulators: worst-case int32 accumulators per Conv / Linear.
        saturation: per layer, the AVX2 ``vpmaddubsw`` int16 pair-sum check with the
            layer's activation bits (only layers with 8-bit-or-narrower inputs).
        notes: conversion notes (recipe, graph).
    """

    requant: str
    ops: list[OpRecord] = field(default_factory=list)
    accumulators: list[AccumulatorBounds] = field(default_factory=list)
    saturation: dict[str, SaturationReport] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def int_ops(self) -> list[OpRecord]:
        return [r for r in self.ops if r.domain == "int"]

    @property
    def float_ops(self) -> list[OpRecord]:
        return [r for r in self.ops if r.domain == "float"]

    @property
    def fully_integer(self) -> bool:
        """True when nothing but the input Quantize and the output Dequantize is float."""
        return not self.float_ops

    @property
    def overflow_risks(self) -> list[AccumulatorBounds]:
        return [b for b in self.accumulators if b.overflows]

    def to_markdown(self) -> str:
        """The report as a Markdown table plus summary lines."""
        lines = [
            f"Integer-only model, requantization: {self.requant}",
            f"{len(self.int_ops)} integer ops, {len(self.float_ops)} float ops, "
            f"{sum(r.domain == 'boundary' for r in self.ops)} quantize/dequantize boundaries",
            "",
            "| op | kind | domain | from | detail |",
            "| --- | --- | --- | --- | --- |",
        ]
        lines += [f"| {r.name} | {r.op} | {r.domain} | {r.source} | {r.detail} |" for r in self.ops]
        risks = self.overflow_risks
        lines.append("")
        lines.append(f"int32 accumulator overflow risks: {len(risks)}" +
                     "".join(f"\n- {b}" for b in risks))
        saturating = {k: v for k, v in self.saturation.items() if v.saturates}
        lines.append(f"AVX2 (no VNNI) u8 x s8 pair saturation: {len(saturating)} layers" +
                     "".join(f"\n- {k}: {v}" for k, v in saturating.items()))
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_markdown()
