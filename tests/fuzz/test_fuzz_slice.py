"""A short seeded slice of the fuzz harness (the full run is in bench/README.md): no input
through the OTLP receiver, the spans-topic handler or the tap, and no reader over the store
they filled, lets an exception escape."""

from __future__ import annotations

from pathlib import Path

from tests.fuzz.harness import run

SLICE_INPUTS = 2400


async def test_a_seeded_slice_of_hostile_inputs_lets_no_exception_escape(tmp_path: Path) -> None:
    findings = await run(SLICE_INPUTS, seed=20261202, seconds=240, store_dir=tmp_path,
                         progress=lambda _: None)
    assert sum(findings.inputs[t] for t in ("otlp_http", "spans_topic", "tap")) == SLICE_INPUTS
    assert findings.inputs["readers"] > 200
    assert not findings.escaped, "\n".join(
        f"{count} x {kind}\n{findings.examples[kind]}" for kind, count in
        findings.escaped.most_common(5))
    # Every kind of answer was exercised: accepted, malformed and oversized bodies.
    assert {"200", "400"} <= set(findings.statuses)
