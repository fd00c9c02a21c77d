from collectors.metrics import render_prometheus
from store.records import GroupLag, LagRow


def test_prometheus_text_has_every_family_and_escapes_labels() -> None:
    rows = [LagRow('we"ird\ngroup', "orders", 2, 10, 15, 5, 1.5, "WARN", 100.0),
            LagRow("g", "orders", 0, None, 3, None, None, "OK", 100.0)]
    groups = [GroupLag("g", "ERR", "STOP", 5, 1.5, 1.0, 0.5, None, 100.0)]
    text = render_prometheus(rows, groups, {"spans_written": 7})
    lines = text.splitlines()
    assert 'flowscope_consumergroup_lag{group="we\\"ird\\ngroup",topic="orders",partition="2"} 5' \
        in lines
    assert 'flowscope_consumergroup_lag_seconds{group="we\\"ird\\ngroup",topic="orders",' \
        'partition="2"} 1.5' in lines
    assert 'flowscope_consumergroup_partition_status{group="g",topic="orders",partition="0"} 0' \
        in lines
    assert 'flowscope_consumergroup_status{group="g"} 2' in lines
    assert 'flowscope_collector_events_total{name="spans_written"} 7' in lines
    assert "# TYPE flowscope_collector_events_total counter" in lines
    assert not any("committed_offset" in line and 'partition="0"' in line for line in lines)
    assert text.endswith("\n")
