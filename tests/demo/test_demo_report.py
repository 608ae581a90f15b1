"""The demo's table on hand-made numbers: mean ± std, every run, beats-by-more-than-the-spread verdicts."""

from __future__ import annotations

import statistics

import pytest

from pri3d.demo.report import compare, describe, findings, summarise, table


def _finetuned(values: dict[str, list[float]]) -> dict[str, list[dict]]:
    """Scratch's values by seed 0..3; an arm's as pre-training seed 0 (fine-tuning seeds 0, 1), then 1."""
    runs = {}
    for init, numbers in values.items():
        if init == "scratch":
            runs[init] = [{"pretrain_seed": None, "seed": s, "miou": v} for s, v in enumerate(numbers)]
        else:
            runs[init] = [{"pretrain_seed": i // 2, "seed": i % 2, "miou": v} for i, v in enumerate(numbers)]
    return runs


def _probed(values: dict[str, list[float]]) -> dict[str, list[dict]]:
    return {
        init: [{"pretrain_seed": s, "miou": v} for s, v in enumerate(numbers)]
        for init, numbers in values.items()
    }


FINETUNED = _finetuned(
    {
        "scratch": [0.100, 0.102, 0.098, 0.100],
        "MoCo": [0.101, 0.099, 0.100, 0.100],
        "View": [0.080, 0.082, 0.078, 0.080],
        "Geo": [0.120, 0.118, 0.122, 0.120],
        "View+Geo": [0.100, 0.110, 0.095, 0.105],
    }
)
PROBED = _probed(
    {
        "scratch": [0.07, 0.07],
        "MoCo": [0.08, 0.08],
        "View": [0.09, 0.09],
        "Geo": [0.11, 0.11],
        "View+Geo": [0.06, 0.10],
    }
)


def test_describe_and_compare():
    stats = describe([0.1, 0.2, 0.3, 0.6])
    assert stats["mean"] == pytest.approx(0.3) and stats["n"] == 4
    assert stats["std"] == pytest.approx(statistics.stdev([0.1, 0.2, 0.3, 0.6]))  # n - 1
    assert describe([0.4]) == {"mean": 0.4, "std": 0.0, "n": 1}
    a, b = {"mean": 0.12, "std": 0.01}, {"mean": 0.10, "std": 0.005}
    assert compare(a, b) == {"delta": pytest.approx(0.02), "spread": pytest.approx(0.015), "verdict": "beats"}
    assert compare(b, a)["verdict"] == "below"
    assert compare({"mean": 0.11, "std": 0.01}, b)["verdict"] == "within"  # +0.01 against a spread of 0.015
    with pytest.raises(ValueError, match="no values"):
        describe([])


def test_summarise_orders_rows_and_compares_with_scratch_and_moco():
    rows = summarise(FINETUNED, PROBED)
    assert [row["init"] for row in rows] == ["scratch", "MoCo", "View", "Geo", "View+Geo"]
    by = {row["init"]: row for row in rows}
    assert set(by["scratch"]["versus"]) == {"MoCo"} and set(by["MoCo"]["versus"]) == {"scratch"}
    assert by["Geo"]["finetune"]["mean"] == pytest.approx(0.12)
    assert by["Geo"]["finetune"]["runs"] == FINETUNED["Geo"]  # every run's number is kept
    verdicts = {
        (init, ref, readout): by[init]["versus"][ref][readout]["verdict"]
        for init in ("View", "Geo", "View+Geo")
        for ref in ("scratch", "MoCo")
        for readout in ("finetune", "probe")
    }
    assert verdicts == {
        ("View", "scratch", "finetune"): "below",
        ("View", "MoCo", "finetune"): "below",
        ("View", "scratch", "probe"): "beats",  # 0.09 against 0.07, both without spread
        ("View", "MoCo", "probe"): "beats",
        ("Geo", "scratch", "finetune"): "beats",
        ("Geo", "MoCo", "finetune"): "beats",
        ("Geo", "scratch", "probe"): "beats",
        ("Geo", "MoCo", "probe"): "beats",
        ("View+Geo", "scratch", "finetune"): "within",  # a mean of 0.1025 with a wide spread
        ("View+Geo", "MoCo", "finetune"): "within",
        ("View+Geo", "scratch", "probe"): "within",  # 0.06 and 0.10: the pre-training seeds disagree
        ("View+Geo", "MoCo", "probe"): "within",
    }
    result = by["Geo"]["versus"]["scratch"]["finetune"]
    spread = statistics.stdev([0.120, 0.118, 0.122, 0.120]) + statistics.stdev([0.100, 0.102, 0.098, 0.100])
    assert result["delta"] == pytest.approx(0.02) and result["spread"] == pytest.approx(spread)


def test_tables_show_mean_std_every_run_and_the_verdicts():
    rows = summarise(FINETUNED, PROBED)
    finetune = table(rows, "finetune")
    assert finetune[0].startswith("| init | fine-tuned val mIoU (mean ± std, runs) |")
    lines = {line.split(" | ")[0][2:]: line for line in finetune[2:]}
    assert (
        lines["scratch"]
        == "| scratch | 10.0 ± 0.2 (4) | 10.0, 10.2, 9.8, 10.0 (seeds 0, 1, 2, 3) | – | +0.0 (spread 0.2): within |"
    )
    assert (
        lines["Geo"]
        == "| Geo | 12.0 ± 0.2 (4) | 0: 12.0, 11.8; 1: 12.2, 12.0 | +2.0 (spread 0.3): **beats** | +2.0 (spread 0.2): **beats** |"
    )
    assert lines["View"].endswith("| -2.0 (spread 0.3): below | -2.0 (spread 0.2): below |")
    probe = table(rows, "probe")
    assert probe[0].startswith("| init | linear probe val mIoU (mean ± std, runs) | per pre-training seed |")
    assert "| View+Geo | 8.0 ± 2.8 (2) | 0: 6.0; 1: 10.0 | +1.0 (spread 2.8): within |" in "\n".join(probe)


def test_findings_say_which_arms_help_and_which_do_not():
    text = findings(summarise(FINETUNED, PROBED))
    assert text[0] == (
        "Fine-tuned, against scratch: Geo (+2.0 against a spread of 0.3) beats scratch; within the spread: "
        "MoCo (+0.0 against a spread of 0.2) and View+Geo (+0.3 against a spread of 0.8); below scratch by more "
        "than the spread: View (-2.0 against a spread of 0.3)."
    )
    assert "Fine-tuned: Geo beats both scratch and MoCo by more than the spread." in text
    assert "Linear probe: View and Geo beat both scratch and MoCo by more than the spread." in text
    nothing = summarise(
        _finetuned({"scratch": [0.1, 0.1, 0.1, 0.1], "MoCo": [0.1] * 4, "Geo": [0.09] * 4}), _probed({})
    )
    assert "Fine-tuned: no Pri3D arm beats both scratch and MoCo by more than the spread." in findings(
        nothing
    )
