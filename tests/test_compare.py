"""utrc.compare: the paired bootstrap of the searched policy against the other runs, and a verdict
that refuses to call a difference bought by a cost difference a win."""

import json
import subprocess
import sys

import pytest

from utrc.compare import CompareError, compare, verdict


def doc(method, scores, realized, average=0.5):
    """A utrc-results/1 document reduced to what the comparison reads: {task: per-item acc}."""
    return {
        "format": "utrc-results/1", "model": "tiny", "method": method, "policy_file": None, "average": average,
        "average_over": sorted(scores), "nominal": {"reduction": 0.3},
        "tasks": {t: {"paper_metric": "acc", "realized_flops_reduction": realized,
                      "item_scores": {"doc_id": list(range(len(s))), "doc_hash": [f"h{i}" for i in range(len(s))],
                                      "acc": s}} for t, s in scores.items()},
    }


SEARCHED = doc("utrc", {"a": [1, 1, 0, 1], "b": [1, 0]}, 0.30)
PAPER = doc("utrc", {"a": [0, 1, 0, 1], "b": [1, 0]}, 0.30)


def test_paired_difference_is_task_balanced_and_its_interval_is_over_items():
    out = compare({"s.json": SEARCHED}, {"utrc-paper": ("p.json", PAPER)}, 0.3, resamples=4000)
    d = out["against"]["utrc-paper"]["difference"]
    assert d["mean"] == pytest.approx((0.25 + 0.0) / 2)  # task a: one of 4 items better; task b: equal
    assert d["ci95"][0] == 0.0 and d["ci95"][1] <= 0.5
    # the mean is <= 0 exactly when a resample of task a misses its one better item: (3/4)^4
    assert d["share_of_resamples_le_0"] == pytest.approx(0.75**4, abs=0.025)
    assert out["against"]["utrc-paper"]["verdict"] == "no difference"  # the interval touches 0


def test_seeds_are_averaged_and_listed():
    worse = doc("utrc", {"a": [0, 1, 0, 1], "b": [0, 0]}, 0.30)
    out = compare({"s0.json": SEARCHED, "s1.json": worse}, {"utrc-paper": ("p.json", PAPER)}, 0.3)
    d = out["against"]["utrc-paper"]["difference"]
    assert d["per_seed"] == pytest.approx([0.125, -0.25]) and d["mean"] == pytest.approx(-0.0625)
    assert out["searched"]["average"]["n"] == 2
    assert [s["file"] for s in out["searched"]["seeds"]] == ["s0.json", "s1.json"]


def test_verdict_needs_equal_or_lower_cost():
    assert verdict(0.01, 0.05, cost_difference=0.0, tolerance=0.01) == "better"
    assert verdict(0.01, 0.05, cost_difference=-0.03, tolerance=0.01).startswith("not comparable")  # removes less
    assert verdict(0.01, 0.05, cost_difference=0.05, tolerance=0.01) == "better"  # removes more and still wins
    assert verdict(-0.05, -0.01, cost_difference=0.03, tolerance=0.01).startswith("not comparable")
    assert verdict(-0.05, -0.01, cost_difference=-0.03, tolerance=0.01) == "worse"
    assert verdict(-0.01, 0.05, cost_difference=0.0, tolerance=0.01) == "no difference"


def test_costs_are_the_realized_reductions_on_the_items():
    cheaper = doc("utrc", {"a": [0, 1, 0, 1], "b": [1, 0]}, 0.40)
    out = compare({"s.json": SEARCHED}, {"tome": ("t.json", cheaper)}, 0.3)
    assert out["against"]["tome"]["realized_flops_reduction"] == pytest.approx(0.40)
    assert out["against"]["tome"]["cost_difference"] == pytest.approx(-0.10)


def test_unpaired_or_unscored_evaluations_are_refused():
    other_items = json.loads(json.dumps(PAPER))
    other_items["tasks"]["a"]["item_scores"]["doc_hash"][0] = "x"
    with pytest.raises(CompareError, match="a: the two evaluations scored different items"):
        compare({"s.json": SEARCHED}, {"utrc-paper": ("p.json", other_items)}, 0.3)
    unscored = json.loads(json.dumps(SEARCHED))
    del unscored["tasks"]["b"]["item_scores"]
    with pytest.raises(CompareError, match="--item-scores"):
        compare({"s.json": unscored}, {"utrc-paper": ("p.json", PAPER)}, 0.3)


def test_command_line_writes_the_document(tmp_path):
    files = {}
    for name, d in (("s", SEARCHED), ("p", PAPER)):
        files[name] = tmp_path / f"{name}.json"
        files[name].write_text(json.dumps(d))
    out = tmp_path / "compare" / "flops0.3.json"
    proc = subprocess.run([sys.executable, "-m", "utrc.compare", "--budget", "0.3", "--out", str(out), "--searched",
                           str(files["s"]), "--against", f"utrc-paper={files['p']}"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    written = json.loads(out.read_text())
    assert written["format"] == "utrc-compare/1" and written["budget"] == 0.3 and "date" in written
    assert "utrc-searched - utrc-paper: +12.5 points" in proc.stdout
