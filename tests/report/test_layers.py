"""layer_table on a small CNN quantized for x86: rows, SQNRs, ranges, status rows, fusion."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch

import lowbit.flows as flows
from lowbit.flows.fuse import fold_bn_into
from lowbit.recipes import Rule, preset
from lowbit.report import LayerRow, ReportError, format_plain, format_table, layer_table, print_table
from lowbit.report.metrics import sqnr_db
from lowbit.report.tables import short_spec, sort_worst_first

QUANTIZED = ["features.0", "features.3", "fc", "head"]


def test_rows_for_every_quantized_layer(cnn, qcnn, batches):
    rows = layer_table(qcnn, cnn, batches)
    by_name = {r.name: r for r in rows}
    assert [r.name for r in rows if r.status == "quantized"] == QUANTIZED  # execution order
    for name in QUANTIZED:
        row = by_name[name]
        assert row.weight.startswith("int8 per-channel") and row.activation.startswith("uint8 per-tensor")
        lo, hi = row.act_range
        assert lo <= 0.0 < hi
        assert math.isfinite(row.weight_sqnr_db) and row.weight_sqnr_db > 35
        assert math.isfinite(row.output_sqnr_db) and row.output_sqnr_db > 25
        assert row.input_sqnr_db is not None
    assert by_name["features.0"].input_sqnr_db == math.inf  # the model input is never quantized
    assert by_name["features.0"].fused_with == "features.1"
    assert by_name["norm"].status == "unsupported" and "LayerNorm" in by_name["norm"].reason
    assert math.isfinite(by_name["norm"].output_sqnr_db)  # error flowing through is measured too


def test_act_range_is_the_quantizers_chosen_range(qcnn, cnn):
    rows = {r.name: r for r in layer_table(qcnn, cnn)}
    for name, role, quantizer in flows.quantizer_modules(qcnn):
        if role == "input" and name in rows:
            assert rows[name].act_range == quantizer.chosen_range()


def test_fused_weight_sqnr_compares_the_folded_weight(cnn, qcnn):
    row = next(r for r in layer_table(qcnn, cnn) if r.name == "features.0")
    folded = copy.deepcopy(cnn.features[0])
    fold_bn_into(folded, cnn.features[1])
    assert row.weight_sqnr_db == pytest.approx(sqnr_db(folded.weight, qcnn.features[0].weight), rel=1e-9)
    # against the unfolded weight it would be meaningless
    assert sqnr_db(cnn.features[0].weight, qcnn.features[0].weight) < 10


def test_without_float_model_or_data(cnn, qcnn, batches):
    rows = layer_table(qcnn)
    assert all(r.weight_sqnr_db is None and r.output_sqnr_db is None for r in rows)
    assert all(r.act_range is not None for r in rows if r.status == "quantized")
    with pytest.raises(ReportError, match="float_model"):
        layer_table(qcnn, None, batches)


def test_unconverted_model_measures_its_own_float_weight(cnn, batches):
    model = copy.deepcopy(cnn)
    flows.fuse(model)
    prepared = flows.prepare(model, preset("x86"))
    flows.calibrate(prepared, batches, progress=False)
    rows = {r.name: r for r in layer_table(prepared)}
    assert all(rows[n].weight_sqnr_db > 35 for n in QUANTIZED)


def test_status_rows_kept_excluded_disabled(cnn, batches):
    recipe = preset("x86").with_(exclude=("head",)).with_rules(Rule("fc", keep="fp16"))
    qmodel = flows.quantize(cnn, recipe, calibrate=batches, progress=False)
    qmodel.features[3].input_quantizer.mode = "off"
    rows = {r.name: r for r in layer_table(qmodel, cnn, batches)}
    assert rows["fc"].status == "kept" and rows["fc"].weight == "fp16"
    assert rows["fc"].weight_sqnr_db > 60  # fp16 rounding only
    assert rows["head"].status == "excluded" and "recipe" in rows["head"].reason
    assert rows["features.3"].status == "disabled" and "input" in rows["features.3"].reason
    assert rows["features.3"].act_range is None


def test_report_leaves_models_untouched(cnn_factory, batches):
    model = cnn_factory().train()
    qmodel = flows.quantize(model, "x86", calibrate=batches, progress=False).train()
    before = copy.deepcopy(model.state_dict()), copy.deepcopy(qmodel.state_dict())
    layer_table(qmodel, model, batches)
    assert model.training and qmodel.training and model.features[1].training
    for old, new in zip(before, (model.state_dict(), qmodel.state_dict()), strict=True):
        assert all(torch.equal(old[k], new[k]) for k in old)


def test_inplace_quantized_float_model_is_refused(cnn_factory, batches):
    model = cnn_factory()
    qmodel = flows.quantize(model, "x86", calibrate=batches, inplace=True, progress=False)
    with pytest.raises(ReportError, match="deepcopy"):
        layer_table(qmodel, qmodel, batches)


def test_non_quantized_model_is_refused(cnn):
    with pytest.raises(ReportError, match=r"lowbit\.quantize"):
        layer_table(cnn)


def test_nan_in_quantized_layer_is_flagged(cnn, batches):
    qmodel = flows.quantize(cnn, "x86", calibrate=batches, progress=False)
    with torch.no_grad():
        qmodel.fc.bias[0] = float("nan")
    rows = {r.name: r for r in layer_table(qmodel, cnn, batches)}
    assert rows["fc"].nonfinite and rows["fc"].output_sqnr_db == -math.inf
    assert sort_worst_first(list(rows.values()))[0].name in ("fc", "head")


def test_tables_render(cnn, qcnn, batches):
    rows = layer_table(qcnn, cnn, batches, sensitivity={"fc": 0.25})
    md = format_table(rows)
    lines = md.splitlines()
    assert lines[0].startswith("| Layer |") and len(lines) == 2 + len(rows)
    assert all(name in md for name in [*QUANTIZED, "norm"]) and "0.25" in md
    assert lines[-1].startswith("| norm |")  # status rows last
    assert "Layer" in format_plain(rows).splitlines()[0]
    buffer = io.StringIO()
    print_table(rows, file=buffer)
    assert "features.3" in buffer.getvalue()
    assert json_ready(rows)


def json_ready(rows: list[LayerRow]) -> bool:
    import json

    json.dumps([r.to_dict() for r in rows], allow_nan=False)
    return True


def test_short_spec():
    assert short_spec("int8 per-channel(axis=0) sym") == "int8 channel sym"
    assert short_spec("int4 per-group(32, axis=1) sym clip-search") == "int4 g32 sym clip-search"
    assert short_spec(None) == "float"


def test_kept_layer_with_folded_bn_compares_after_the_bn(cnn, batches):
    recipe = preset("x86").with_rules(Rule("features.0", keep="fp16"))
    qmodel = flows.quantize(cnn, recipe, calibrate=batches, progress=False)
    row = next(r for r in layer_table(qmodel, cnn, batches) if r.name == "features.0")
    assert row.status == "kept" and row.fused_with == "features.1"
    assert row.weight_sqnr_db > 60 and row.output_sqnr_db > 50  # fp16 rounding only
