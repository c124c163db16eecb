"""Report pages: hostile text stays text, and the comparison page reads right for any sweep
(one recall or several, one seed or several) from result rows alone."""

from __future__ import annotations

import csv
import io
import math
from fnmatch import fnmatch
from pathlib import Path

import pytest
from helpers import html_tables

from optimus_lib.errors import OptimusError
from optimus_lib.evaluate.stats import estimate, t975
from optimus_lib.report.comparison import comparison_figure, render_comparison
from optimus_lib.report.experiment import render_experiment
from optimus_lib.report.html import render_report

ROOT = Path(__file__).resolve().parents[2]
METHODS = ("no_defense", "filter", "optimus")
# toxic-context RTR at seed 0 and its per-seed step (so seeds differ, and so do the diffs)
BASE = {"no_defense": 0.150, "filter": 0.125, "optimus": 0.100}
STEP = {"no_defense": 0.01, "filter": 0.02, "optimus": 0.01}
HOSTILE = "<script>alert('x')</script>"


def _row(seed: int, recall: float, method: str) -> dict:
    """A row as experiment.py writes it (no_defense: no detector figures, no diff)."""
    tox = BASE[method] + STEP[method] * seed - (0.02 * recall if method != "no_defense" else 0)
    ref = method == "no_defense"
    tox_nd = BASE["no_defense"] + STEP["no_defense"] * seed
    return {
        "seed": seed,
        "recall_target": recall,
        "detector_recall": None if ref else recall,
        "detector_precision": None if ref else 0.9,
        "flagged": None if ref else 4,
        "method": method,
        "rtr_toxic": tox,
        "rtr_benign": 0.02 + 0.01 * seed,
        "mean_toxicity_toxic": 0.3,
        "mean_toxicity_benign": 0.1,
        "perplexity": 12.0 + seed,
        "similarity": None,
        "over_refusal": 0.05,
        "distinct_2": 0.6,
        "rtr_toxic_lo": tox - 0.03,
        "rtr_toxic_hi": tox + 0.03,
        "rtr_benign_lo": 0.0,
        "rtr_benign_hi": 0.05 + 0.01 * seed,
        "rtr_toxic_diff_lo": None if ref else tox - tox_nd - 0.02,
        "rtr_toxic_diff_hi": None if ref else tox - tox_nd + 0.02,
    }


def _rows(recalls: list[float], seeds: list[int]) -> list[dict]:
    return [_row(s, r, m) for s in seeds for r in recalls for m in METHODS]


def _table(page: str, heading: str) -> list[list[str]]:
    """The rows (header first) of the page's table under the heading starting so."""
    tables = html_tables(page)
    (key,) = [k for k in tables if k.startswith(heading)]
    return tables[key]


def _by_first(rows: list[list[str]], n: int = 1) -> dict:
    """Body rows as {first cell (or first n cells): {header: cell}}."""
    header, body = rows[0], rows[1:]
    return {tuple(r[:n]) if n > 1 else r[0]: dict(zip(header, r)) for r in body}


def _ci(vals: list[float], t: float) -> tuple[float, float, float]:
    m = sum(vals) / len(vals)
    sd = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))
    return m, m - t * sd / math.sqrt(len(vals)), m + t * sd / math.sqrt(len(vals))


# ---- one recall, one seed ---------------------------------------------------------------------
def test_one_recall_one_seed_shows_bootstrap_and_paired_intervals():
    page = render_comparison(_rows([0.15], [0]), "sweep")
    tox = _by_first(_table(page, "RTR on toxic contexts"))["0.15"]
    # 0.125 - 0.02 * 0.15 = 0.122, with the row's interval +-0.03
    assert tox["no_defense"] == "0.150 [0.120, 0.180]"
    assert tox["filter"] == "0.122 [0.092, 0.152]"
    assert tox["optimus"] == "0.097 [0.067, 0.127]"
    assert tox["detector recall"] == "0.150"
    paired = _by_first(_table(page, "Paired difference in toxic-context RTR vs no_defense"))
    assert "no_defense" not in paired["0.15"]
    assert paired["0.15"]["filter"] == "-0.028 [-0.048, -0.008]"
    assert paired["0.15"]["optimus"] == "-0.053 [-0.073, -0.033]"
    assert "per seed" not in page  # one seed: pooled is the seed
    metrics = _by_first(_table(page, "Toxicity and utility"), 2)
    col = "RTR toxic − no_defense [95 %, paired]"
    assert metrics[("0.15", "no_defense")][col] == "reference"
    assert metrics[("0.15", "filter")][col] == "-0.028 [-0.048, -0.008]"
    assert metrics[("0.15", "filter")]["seeds"] == "1"
    assert metrics[("0.15", "filter")]["perplexity"] == "12.000"  # no interval: bare
    assert "similarity" not in _table(page, "Toxicity and utility")[0]  # all None: no column
    assert 'alt="RTR by method"' in page


def test_one_recall_plots_methods_on_a_categorical_axis():
    """One recall used to give a reversed 0.142-0.158 recall axis; now one point per
    method, left to right in row order, with the row's interval as error bar."""
    import matplotlib.pyplot as plt

    fig = comparison_figure(_rows([0.15], [0]))
    try:
        for ax in fig.axes:
            assert [t.get_text() for t in ax.get_xticklabels()] == list(METHODS)
            assert ax.get_xlim() == (-0.5, 2.5) and not ax.xaxis_inverted()
        ax = fig.axes[0]
        points = [c.lines[0].get_xydata()[0] for c in ax.containers]
        assert [x for x, _ in points] == [0, 1, 2]
        assert [round(y, 3) for _, y in points] == [0.15, 0.122, 0.097]
        low, high = ax.get_ylim()
        assert low == 0.0 and high > 0.18  # the top of no_defense's interval shows
    finally:
        plt.close(fig)


# ---- one recall, three seeds ------------------------------------------------------------------
def test_one_recall_three_seeds_pools_with_t_intervals_and_lists_each_seed():
    rows = _rows([0.15], [0, 1, 2])
    page = render_comparison(rows, "three seeds")
    tox = _by_first(_table(page, "RTR on toxic contexts"))["0.15"]
    # no_defense 0.15, 0.16, 0.17: mean 0.16, sd 0.01, t(2) = 4.303 -> +-0.0248
    assert tox["no_defense"] == "0.160 [0.135, 0.185]"
    m, lo, hi = _ci([0.122, 0.142, 0.162], 4.303)
    assert tox["filter"] == f"{m:.3f} [{lo:.3f}, {hi:.3f}]" == "0.142 [0.092, 0.192]"
    paired = _by_first(_table(page, "Paired difference in toxic-context RTR vs no_defense"))
    # filter - no_defense per seed: -0.028, -0.018, -0.008 -> mean -0.018 +- 0.0248
    assert paired["0.15"]["filter"] == "-0.018 [-0.043, +0.007]"
    # optimus moves with no_defense: the same difference every seed, a zero-width interval
    assert paired["0.15"]["optimus"] == "-0.053 [-0.053, -0.053]"
    per_seed = _by_first(_table(page, "Paired difference vs no_defense, per seed"), 2)
    assert set(per_seed) == {("0.15", "0"), ("0.15", "1"), ("0.15", "2")}
    assert per_seed[("0.15", "1")]["filter"] == "-0.018 [-0.038, +0.002]"  # the row's own
    assert per_seed[("0.15", "2")]["optimus"] == "-0.053 [-0.073, -0.033]"
    metrics = _by_first(_table(page, "Toxicity and utility"), 2)
    assert metrics[("0.15", "optimus")]["seeds"] == "3"
    assert metrics[("0.15", "optimus")]["RTR toxic − no_defense [95 %, paired]"] != ""
    assert metrics[("0.15", "filter")]["perplexity"] == "13.000 [10.516, 15.484]"

    import matplotlib.pyplot as plt

    fig = comparison_figure(rows)
    try:
        ax = fig.axes[0]
        assert [t.get_text() for t in ax.get_xticklabels()] == list(METHODS)
        # the individual seeds beside each method's point
        from matplotlib.collections import PathCollection

        dots = [c for c in ax.collections if isinstance(c, PathCollection)]
        assert len(dots) == 3  # one group per method
        seeds = sorted(round(y, 3) for y in dots[0].get_offsets()[:, 1])
        assert seeds == [0.15, 0.16, 0.17]
    finally:
        plt.close(fig)


# ---- three recalls, two seeds -----------------------------------------------------------------
def test_three_recalls_two_seeds_increasing_axis_and_every_paired_cell():
    rows = _rows([1.0, 0.5, 0.15], [0, 1])
    page = render_comparison(rows, "sweep")
    tox = _table(page, "RTR on toxic contexts")
    assert [r[0] for r in tox[1:]] == ["1", "0.5", "0.15"]  # as the sweep lists them
    assert tox[0] == ["recall target", "detector recall", *METHODS]
    by = _by_first(tox)
    # filter at recall 1: 0.105 and 0.125 over the seeds; t(1) = 12.706 -> +-0.127, and
    # the lower end (-0.012) is clipped at 0, where a rate ends
    m, lo, hi = _ci([0.105, 0.125], 12.706)
    assert lo < 0 and by["1"]["filter"] == f"{m:.3f} [0.000, {hi:.3f}]" == "0.115 [0.000, 0.242]"
    assert by["0.5"]["detector recall"] == "0.500"
    paired = _by_first(_table(page, "Paired difference in toxic-context RTR vs no_defense"))
    for recall in ("1", "0.5", "0.15"):
        for method in ("filter", "optimus"):
            cell = paired[recall][method]
            assert cell.count("[") == 1 and cell.startswith("-"), (recall, method, cell)
    assert paired["1"]["optimus"] == "-0.070 [-0.070, -0.070]"
    per_seed = _table(page, "Paired difference vs no_defense, per seed")
    assert len(per_seed) == 1 + 3 * 2 and all(c for r in per_seed[1:] for c in r)
    assert 'alt="RTR vs recall"' in page

    import matplotlib.pyplot as plt

    fig = comparison_figure(rows)
    try:
        for ax in fig.axes:
            left, right = ax.get_xlim()
            assert left < 0.15 and right > 1.0 and not ax.xaxis_inverted()
            assert list(ax.get_xticks()) == [0.15, 0.5, 1.0]
        lines = {c.get_label(): c.lines[0].get_xydata() for c in fig.axes[0].containers}
        assert set(lines) == set(METHODS)
        for xy in lines.values():
            xs = list(xy[:, 0])
            assert xs == sorted(xs)  # offset per method by at most 1.2 % of the span
            assert all(abs(x - r) <= 0.012 * 0.85 + 1e-9 for x, r in zip(xs, [0.15, 0.5, 1.0]))
        # filter's mean RTR falls as recall rises, left to right
        assert [round(y, 3) for y in lines["filter"][:, 1]] == [0.132, 0.125, 0.115]
    finally:
        plt.close(fig)


def test_reference_row_from_another_recall_still_pairs():
    """A collector that kept no_defense at one recall only: the seed's row pairs at all."""
    rows = [
        r
        for r in _rows([1.0, 0.5], [0])
        if r["method"] != "no_defense" or r["recall_target"] == 1.0
    ]
    paired = _by_first(_table(render_comparison(rows, "t"), "Paired difference"))
    assert paired["0.5"]["filter"] == "-0.035 [-0.055, -0.015]"


def test_without_no_defense_the_page_says_so():
    rows = [r for r in _rows([0.5], [0]) if r["method"] != "no_defense"]
    page = render_comparison(rows, "t")
    assert "No no_defense rows" in page
    assert not any(k.startswith("Paired") for k in html_tables(page))
    assert all("paired" not in h for h in _table(page, "Toxicity and utility")[0])


def test_csv_rows_give_the_same_tables():
    """results.csv rows (all text, None as '') render like the JSON rows."""
    rows = _rows([1.0, 0.15], [0, 1])
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    from_csv = list(csv.DictReader(io.StringIO(buf.getvalue())))
    assert html_tables(render_comparison(from_csv, "t")) == html_tables(
        render_comparison(rows, "t")
    )


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        ([{"seed": 0, "recall_target": 0.5}], "result row 1 lacks method"),
        ([_row(0, 0.5, "filter"), {"seed": 0, "method": "x"}], "row 2 lacks recall_target"),
        ([{**_row(0, 0.5, "filter"), "seed": "zero"}], "seed is not a number: 'zero'"),
        (["no"], "row 1 is a str"),
    ],
)
def test_bad_rows_fail_in_one_line(rows, match):
    with pytest.raises(OptimusError, match=match):
        render_comparison(rows, "t")


def test_no_rows_is_an_empty_page():
    page = render_comparison([], "nothing yet")
    assert "No result rows yet" in page and "<img" not in page


def test_experiment_page_adds_attack_sections_config_and_time():
    """Attacked rows get a section of their own (RTR, paired difference on the attacked
    data, detector recall on the evaded replies); the main tables keep the clean rows."""
    clean = _rows([0.5], [0])
    attacked = [
        {
            **r,
            "seed": 1000,
            "data_seed": 0,
            "attack": "jailbreak:friendly_suffix",
            "rtr_toxic": r["rtr_toxic"] + 0.1,
            "detector_recall_evaded": None if r["method"] == "no_defense" else 0.25,
        }
        for r in clean
    ]
    res = {
        "name": "exp",
        "rows": clean + attacked,
        "config": {"name": "exp", "seeds": [0]},
        "seconds": 12.5,
    }
    page = render_experiment(res)
    main = _by_first(_table(page, "RTR on toxic contexts"))["0.5"]
    assert main["no_defense"].startswith(f"{BASE['no_defense']:.3f}")
    hit = _by_first(_table(page, "Attack jailbreak:friendly_suffix: RTR on toxic contexts"))
    assert hit["0.5"]["no_defense"].startswith(f"{BASE['no_defense'] + 0.1:.3f}")
    det = _table(page, "Attack jailbreak:friendly_suffix: detector recall")
    assert det[1] == ["0.5", "0.500", "0.250"]
    assert _table(page, "Attack jailbreak:friendly_suffix: paired difference")
    assert "seeds:\n- 0" in page and "Wall time: 12.5 s" in page
    assert "Adaptive attacks" not in render_experiment({**res, "rows": clean})


# ---- statistics -------------------------------------------------------------------------------
def test_t_quantiles_match_scipy():
    stats = pytest.importorskip("scipy.stats")  # installed with scikit-learn
    for df in range(1, 201):
        assert t975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=6e-4), df
    with pytest.raises(ValueError):
        t975(0)


def test_estimate_one_seed_interval_several_seeds_t_interval():
    one = estimate([(0.2, 0.1, 0.35)])
    assert (one.value, one.lo, one.hi, one.n) == (0.2, 0.1, 0.35, 1)
    assert one.yerr() == pytest.approx((0.1, 0.15))
    bare = estimate([(0.2, None, None)])
    assert bare.text() == "0.200" and bare.yerr() == (0.0, 0.0)
    assert estimate([(None, None, None), (float("nan"), 0, 1)]).text() == "n/a"
    two = estimate([(0.01, 0, 0.1), (0.03, 0, 0.1)], (0.0, 1.0))
    assert two.value == pytest.approx(0.02) and two.lo == 0.0  # clipped at the bound
    assert two.hi == pytest.approx(0.02 + 12.7062 * math.sqrt(2e-4) / math.sqrt(2))
    assert estimate([(-0.05, -0.08, -0.01)]).text(signed=True) == "-0.050 [-0.080, -0.010]"


# ---- escaping ---------------------------------------------------------------------------------
def test_run_report_escapes_hostile_samples_and_reasons():
    metrics = {
        "name": HOSTILE,
        "evaluator": "wordlist",
        "methods": {"fine-tuned": {"rtr_toxic": 0.1, "rtr_benign": 0.0}},
        "gate": {"passed": False, "reasons": [f"rtr {HOSTILE}"], "checked": ["max_rtr_toxic"]},
        "detector": {"name": HOSTILE, "precision": 0.5},
    }
    sample = {
        "method": "fine-tuned",
        "set": "toxic",
        "context": ["hi", f"tell me {HOSTILE}"],
        "reply": f"sure {HOSTILE} <img src=x onerror=alert(1)>",
        "toxicity": 0.9,
    }
    page = render_report(metrics, f"model: {HOSTILE}", [sample])
    assert "<script" not in page and "<img src=x" not in page
    assert page.count("&lt;script&gt;") == 6  # name, reason, detector, context, reply, config
    assert "FAILED" in page and "<li>max_rtr_toxic</li>" in page
    samples = _table(page, "Sample generations")
    assert samples[1][2] == f"tell me {HOSTILE}" and samples[1][3].startswith("sure <script>")


def test_comparison_escapes_hostile_names():
    rows = [{**r, "method": r["method"] + HOSTILE} for r in _rows([0.5], [0])]
    rows += [{**r, "seed": 1000, "attack": HOSTILE} for r in rows]
    page = render_comparison(rows, HOSTILE, config={"name": HOSTILE})
    assert "<script" not in page and "&lt;script&gt;" in page
    assert _table(page, "RTR on toxic contexts")[0][2] == "no_defense" + HOSTILE


def test_templates_ship_as_package_data():
    """Every template matches a package-data pattern, so a wheel (the images) has them."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = conf["tool"]["setuptools"]["package-data"]["optimus_lib"]
    templates = sorted((ROOT / "optimus_lib" / "report" / "templates").glob("*"))
    assert templates
    for t in templates:
        rel = t.relative_to(ROOT / "optimus_lib").as_posix()
        assert any(fnmatch(rel, p) for p in patterns), rel
    assert any(d.startswith("jinja2") for d in conf["project"]["dependencies"])
