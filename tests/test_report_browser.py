"""report.html in a real browser: headless Chromium (the system's, Debian's ``chromium`` + ``chromium-driver``)
driven by Selenium opens the report of a small real run (the embedded stories260K model) and checks that every
view renders without a console error, that sorting, filtering, search, the heatmap's cells and a pair's drilldown
do what the data say; each view's screenshot is kept as an artefact (``$TRANSFERLAB_ARTIFACTS`` if set, else the
test's temporary directory; the path is printed).

Skipped, with the reason, where no Chromium, chromedriver or selenium is installed (``.ci/run`` installs them).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pandas as pd
import pytest

from transferlab.experiments import load_config, run_experiment
from transferlab.experiments.exports import TOKENS_KEY
from transferlab.experiments.store import RunStore
from transferlab.report import build_summary
from transferlab.report.html import html_data, render_html

CHROMIUM = os.environ.get("TRANSFERLAB_CHROMIUM") or next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)
DRIVER = os.environ.get("TRANSFERLAB_CHROMEDRIVER") or shutil.which("chromedriver")
try:
    import selenium  # noqa: F401

    HAVE_SELENIUM = True
except ImportError:
    HAVE_SELENIUM = False

_MISSING = [
    what
    for what, ok in (
        ("chromium (apt-get install chromium)", CHROMIUM),
        ("chromedriver (apt-get install chromium-driver)", DRIVER),
        ("selenium (pip install -e .[test])", HAVE_SELENIUM),
    )
    if not ok
]
pytestmark = [
    pytest.mark.skipif(bool(_MISSING), reason=f"report.html browser tests skipped: no {', '.join(_MISSING)}"),
    pytest.mark.filterwarnings("ignore:no vocabulary token spells:UserWarning"),
]
MODEL = "stories260K"
VIEWS = ("verdict", "examples", "pair", "contrasts", "overview", "run")


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory) -> Path:
    where = os.environ.get("TRANSFERLAB_ARTIFACTS")
    path = Path(where) / "report_browser" if where else tmp_path_factory.mktemp("report_browser")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A small real run: stories260K, 4 pairs x 8 conditions x 2 seeds, 12 new tokens, with its report."""
    out = tmp_path_factory.mktemp("browser_run")
    cfg = load_config(
        "stories",
        [f"output_dir={out}", "prompts.n=4", "seeds=[0, 1]", "generation.max_new_tokens=12", "batch_size=64"],
    )
    run_dir = run_experiment(cfg, progress=False, report=True)
    store = RunStore(run_dir / "store.sqlite", create=False)
    try:
        tokens = store.get(f"{TOKENS_KEY}:{MODEL}")
    finally:
        store.close()
    return run_dir, pd.read_parquet(run_dir / "results.parquet"), tokens


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
    ):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    yield driver
    driver.quit()


def css(driver, selector):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def errors(driver) -> list[str]:
    """The console's errors since the last call (uncaught exceptions included)."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def open_page(driver, path: Path, view: str = "verdict"):
    driver.get("about:blank")  # a fresh load, even of the page already open
    driver.get(path.resolve().as_uri() + "#" + view)
    errors(driver)  # nothing before the page counts


def click_tab(driver, view):
    (button,) = css(driver, f'#tabs button[data-view="{view}"]')
    button.click()
    (section,) = css(driver, f"#view-{view}")
    assert section.is_displayed()


def choose(driver, select_id, value):
    from selenium.webdriver.support.ui import Select

    Select(css(driver, f"#{select_id}")[0]).select_by_value(str(value))


def shown_pairs(driver) -> list[str]:
    return [tr.get_attribute("data-pair") for tr in css(driver, "#ex-table tbody tr")]


def pair_order(results: pd.DataFrame) -> list[str]:
    """Pairs in the page's order: first appearance in the results' row order."""
    keys = results["model"] + "|" + results["seed"].astype(str) + "|" + results["pair_id"].astype(str)
    return list(dict.fromkeys(keys))


def test_every_view_renders_without_console_errors(browser, run, artefacts):
    run_dir, results, _ = run
    page = run_dir / "report.html"
    open_page(browser, page)
    for view in VIEWS:
        click_tab(browser, view)
        time.sleep(0.2)
        browser.save_screenshot(str(artefacts / f"{view}.png"))
    print(f"report.html screenshots: {artefacts}")
    assert errors(browser) == []
    open_page(browser, page)
    n_deltas = len(
        [d for d in json.loads((run_dir / "summary.json").read_text())["deltas"] if d["score"] == "source_lexicon"]
    )
    assert len(css(browser, "#forest svg g.frow")) == n_deltas  # one forest row per delta of the primary score
    assert css(browser, "#reading p.reading")[0].text.startswith(f"{MODEL}: transfer")
    click_tab(browser, "examples")
    assert len(shown_pairs(browser)) == min(25, results.groupby(["seed", "pair_id"]).ngroups)
    click_tab(browser, "overview")
    conds = results["condition"].nunique()
    assert len(css(browser, "#heatmap tbody tr")) == conds - 1  # every condition but the reference
    if "target_kept" in results.columns:  # survival's table, one row per condition
        assert len(css(browser, "#extra-tables table.survival tbody tr")) == conds
    click_tab(browser, "run")
    assert '"name": "stories"' in css(browser, "#run-info pre.json")[-1].text
    assert errors(browser) == []


def test_sorting_by_the_change_against_the_reference(browser, run):
    run_dir, results, _ = run
    open_page(browser, run_dir / "report.html", "examples")
    wide = results.pivot_table(index=["model", "seed", "pair_id"], columns="condition", values="source_overlap")
    delta = (wide["transfer"] - wide["baseline"]).to_dict()
    assert len(set(delta.values())) > 1, "the run gives no spread to sort by; change its size"
    order = pair_order(results)

    def key(k):
        m, s, p = k.split("|")
        return delta[(m, int(s), int(p))]

    for direction, sign in (("desc", -1), ("asc", 1)):
        choose(browser, "ex-sort-cond", "transfer")
        choose(browser, "ex-sort-score", "source_overlap")
        choose(browser, "ex-sort-kind", "delta")
        choose(browser, "ex-sort-dir", direction)
        want = sorted(order, key=lambda k: sign * key(k))  # stable, as the page's sort
        assert shown_pairs(browser) == want[:25]
    assert errors(browser) == []


def test_filtering_by_seed_and_condition_and_search(browser, run):
    run_dir, results, _ = run
    open_page(browser, run_dir / "report.html", "examples")
    choose(browser, "ex-seed", "1")
    shown = shown_pairs(browser)
    assert shown and all(k.split("|")[1] == "1" for k in shown)
    assert len(shown) == results.loc[results.seed == 1, "pair_id"].nunique()
    choose(browser, "ex-seed", "")
    # hide a condition: its column goes, the others stay
    (box,) = css(browser, '#ex-conds input[value="noise"]')
    box.click()
    heads = [th.get_attribute("data-condition") for th in css(browser, "#ex-table thead th[data-condition]")]
    assert "noise" not in heads and "transfer" in heads and "baseline" in heads
    box.click()
    # search: a word of one continuation finds exactly the pairs whose prompts or continuations hold it
    words = results["text"].str.lower().str.findall(r"[a-z]{5,}").explode().dropna()
    counts = words.value_counts()
    term = counts[counts >= 1].index[-1]
    hay = results.assign(
        h=(results["source_text"] + "\n" + results["target_text"] + "\n" + results["text"]).str.lower()
    )
    keys = hay["model"] + "|" + hay["seed"].astype(str) + "|" + hay["pair_id"].astype(str)
    want = {k for k, h in zip(keys, hay["h"]) if term in h}
    (search,) = css(browser, "#ex-search")
    search.send_keys(term)
    assert set(shown_pairs(browser)) == want and want
    marks = [m.text.lower() for m in css(browser, "#ex-table mark")]
    assert all(m for m in marks)  # highlighting yields words, never empty marks
    assert errors(browser) == []


def test_a_heatmap_cell_filters_the_examples(browser, run):
    run_dir, _, _ = run
    open_page(browser, run_dir / "report.html", "overview")
    (cell,) = css(browser, '#heatmap td.hc[data-condition="transfer"][data-score="source_overlap"]')
    cell.click()
    assert css(browser, "#view-examples")[0].is_displayed()
    heads = [th.get_attribute("data-condition") for th in css(browser, "#ex-table thead th[data-condition]")]
    assert heads == ["baseline", "transfer"]
    assert [
        css(browser, f"#{i}")[0].get_attribute("value") for i in ("ex-sort-cond", "ex-sort-score", "ex-sort-kind")
    ] == [
        "transfer",
        "source_overlap",
        "delta",
    ]
    assert errors(browser) == []


def test_the_drilldown_shows_the_written_positions_and_the_departure(browser, run):
    run_dir, results, tokens = run
    open_page(browser, run_dir / "report.html", "examples")
    first = shown_pairs(browser)[0]
    css(browser, "#ex-table tbody tr button.open")[0].click()
    assert css(browser, "#view-pair")[0].is_displayed()
    model, seed, pair = first.split("|")
    rows = results[(results.seed == int(seed)) & (results.pair_id == int(pair))].set_index("condition")
    transfer, baseline = rows.loc["transfer"], rows.loc["baseline"]
    strips = css(browser, "#pair-body .tokens")
    assert len(strips) == 2  # source and target, as tokens
    target = strips[1].find_elements("css selector", ".tok")
    assert [t.get_attribute("data-pos") for t in target] == [str(i) for i in range(len(tokens[transfer.target_id]))]
    # the transfer's plan: kv:all writes every prefix slot but the first (BOS) and the last token; the v_proj patch
    # at w16 writes the last 16 prompt positions; from the audit's counts
    audit = {a["description"].split(":")[0]: a for a in json.loads(transfer.audit)}
    n = len(target)
    kv = set(range(n - 1 - audit["kv"]["positions"], n - 1))
    patch = audit[next(k for k in audit if k.startswith("v_proj"))]
    vp = set(range(n - (patch["positions"] - patch["fired_decode"]), n))
    written = {int(t.get_attribute("data-pos")) for t in target if "w" in t.get_attribute("class").split()}
    assert written == kv | vp and 0 not in written
    assert len(css(browser, "#pair-body table.audit tbody tr")) == len(audit)
    a, b = baseline.text, transfer.text
    common = next((i for i in range(min(len(a), len(b))) if a[i] != b[i]), min(len(a), len(b)))
    (row,) = css(browser, '#pair-body .cont-row[data-condition="transfer"]')
    assert row.get_attribute("data-departs") == ("" if a == b else str(common))
    assert errors(browser) == []


def test_a_strip_point_shows_both_texts_on_hover(browser, run):
    from selenium.webdriver.common.action_chains import ActionChains

    run_dir, results, _ = run
    open_page(browser, run_dir / "report.html", "contrasts")
    (group,) = css(browser, '#strips g.srow[data-condition="transfer"][data-reference="baseline"]')
    dots = group.find_elements("css selector", "circle.dot")
    assert len(dots) == results.loc[results.condition == "transfer", "source_lexicon"].notna().sum()
    ActionChains(browser).move_to_element(dots[0]).perform()
    (tip,) = css(browser, "#tip")
    assert tip.is_displayed() and "transfer − baseline" in tip.text
    shown = [d.text for d in tip.find_elements("css selector", ".ctext")]
    text = results.set_index(["seed", "pair_id", "condition"])["text"]
    units = {(s, p) for s, p, _ in text.index}
    # the transfer's continuation, then the baseline's, of one and the same (pair, seed); whitespace as rendered
    same = [" ".join(text[(s, p, c)].split()) for s, p in units for c in ("transfer", "baseline")]
    pairs = [same[k : k + 2] for k in range(0, len(same), 2)]
    assert [" ".join(x.split()) for x in shown] in pairs
    assert errors(browser) == []


def test_an_old_run_without_prompts_or_tokens_renders(browser, run, tmp_path):
    _, results, _ = run
    old = results.drop(columns=["source_text", "target_text", "decode_path"])
    summary = build_summary(old, ["source_lexicon", "source_overlap"], n_boot=200, n_perm=199)
    page = tmp_path / "report.html"
    page.write_text(render_html(html_data(old, summary, notes=["made before texts were recorded"])))
    open_page(browser, page)
    for view in VIEWS:
        click_tab(browser, view)
    assert "made before texts were recorded" in css(browser, "#notes")[0].get_attribute("textContent")
    assert css(browser, "#pair-body .ptext")  # the prompt's id in place of its tokens
    assert errors(browser) == []


def test_a_page_of_another_format_says_so(browser, run, tmp_path):
    _, results, _ = run
    data = html_data(results, build_summary(results, ["source_lexicon"], n_boot=200, n_perm=199))
    data["format"] = 99
    page = tmp_path / "report.html"
    page.write_text(render_html(data))
    open_page(browser, page)
    assert "this file holds format 99" in css(browser, "main p.warn")[0].text
    assert errors(browser) == []


def test_a_confirmatory_family_is_marked_and_tabled(browser, run, tmp_path):
    _, results, _ = run
    analysis = {
        "primary": "source_lexicon",
        "confirmatory": ["transfer - baseline"],
        "equivalence": [{"contrast": "transfer - kv_only", "margin": 0.5}],
    }
    summary = build_summary(results, ["source_lexicon", "source_overlap"], n_boot=200, n_perm=199, analysis=analysis)
    page = tmp_path / "report.html"
    page.write_text(render_html(html_data(results, summary)))
    open_page(browser, page)
    rows = css(browser, "#confirmatory table.family tbody tr")
    contrasts = [r.find_elements("css selector", "td")[1].text for r in rows]
    assert contrasts == ["transfer − baseline", "transfer − kv_only"]
    claims = css(browser, "#forest g.frow.claim")
    assert {(g.get_attribute("data-condition"), g.get_attribute("data-reference")) for g in claims} == {
        ("transfer", "baseline"),
        ("transfer", "kv_only"),
    }
    assert len(css(browser, "#reading p.reading")) == 2  # the primary line and the equivalence claims' line
    assert errors(browser) == []
