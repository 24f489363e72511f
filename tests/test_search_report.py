"""The search report: Pareto fronts by hand, best trials, the files it writes, and the HTML as a
real headless Chromium renders it (rows, images, screenshot, no console errors, nothing fetched)."""

from __future__ import annotations

import base64
import csv
import io
import json
import math
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import optuna
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageStat

from effml.errors import SearchError
from effml.search.study.report import (
    FRONT_COLOR,
    TARGET_COLOR,
    Report,
    best_trials,
    pareto_front,
    write_report,
)
from effml.zoo import resolve_spec, spec_to_dict

optuna.logging.set_verbosity(optuna.logging.WARNING)

# ---------------------------------------------------------------------------------------------
# pareto_front on hand examples


def test_pareto_front_hand_example() -> None:
    points = [(0.70, 10.0), (0.75, 12.0), (0.72, 12.0), (0.80, 20.0), (0.78, 25.0), (0.60, 10.0)]
    # 2: same latency as 1, less accurate; 4: slower and less accurate than 3; 5: slower than 0.
    assert pareto_front(points) == [0, 1, 3]


def test_pareto_front_ties_and_duplicates() -> None:
    assert pareto_front([(0.8, 20.0), (0.8, 20.0), (0.7, 10.0)]) == [2, 0, 1]  # both copies stay
    assert pareto_front([(0.8, 20.0), (0.8, 15.0)]) == [1]  # equal accuracy: the faster wins
    assert pareto_front([(0.7, 10.0), (0.75, 10.0)]) == [1]  # equal latency: the more accurate wins
    assert pareto_front([(0.7, 10.0), (0.7, 10.0), (0.7, 10.0)]) == [0, 1, 2]
    assert pareto_front([]) == []
    assert pareto_front([(0.5, 1.0)]) == [0]


def test_pareto_front_directions_and_non_finite() -> None:
    # Minimise both: (2, 4) is beaten by (2, 3).
    assert pareto_front([(1, 5), (2, 3), (3, 1), (2, 4)], maximize_first=False) == [2, 1, 0]
    # Maximise both: best second coordinate first; (1, 4) is beaten by (1, 5).
    assert pareto_front([(1, 5), (2, 3), (3, 1), (1, 4)], minimize_second=False) == [0, 1, 2]
    assert pareto_front([(math.nan, 1.0), (0.9, math.inf), (0.5, 2.0)]) == [2]


def _dominated(p: tuple[int, int], q: tuple[int, int]) -> bool:
    """q dominates p (maximise the first, minimise the second)."""
    return q[0] >= p[0] and q[1] <= p[1] and q != p


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 4)), max_size=25))
def test_pareto_front_matches_the_definition(points: list[tuple[int, int]]) -> None:
    # Small integer grids force ties and duplicates; the O(n^2) definition is the oracle.
    want = {i for i, p in enumerate(points) if not any(_dominated(p, q) for q in points)}
    got = pareto_front([(float(a), float(b)) for a, b in points])
    assert set(got) == want and len(got) == len(want)
    assert [points[i][1] for i in got] == sorted(points[i][1] for i in got)


# ---------------------------------------------------------------------------------------------
# Studies built by hand from the record format


_SPECS: dict[str, dict[str, Any]] = {}


def _spec(name: str) -> dict[str, Any]:
    if name not in _SPECS:
        _SPECS[name] = spec_to_dict(resolve_spec(name))
    return _SPECS[name]


KERNEL = optuna.distributions.CategoricalDistribution([3, 5])
EXPAND = optuna.distributions.CategoricalDistribution([3, 6])
NAMES = ["efficientnet_b0", "efficientnet_lite0", "mixnet_s"]


def _trial(n: int, acc: float, lat: float | None, macs: int, *, values: list[float],
           latency_key: str = "latency_ms") -> optuna.trial.FrozenTrial:
    metrics = {"accuracy": acc, "macs": macs, "params": 4_000_000 + 10_000 * n,
               "reward": values[0] if len(values) == 1 else None}
    if lat is not None:
        metrics[latency_key] = lat
    return optuna.trial.create_trial(
        values=values, params={"s2.r0.kernel_size": [3, 5][n % 2], "s3.r0.expand_ratio": [3, 6][n // 2 % 2]},
        distributions={"s2.r0.kernel_size": KERNEL, "s3.r0.expand_ratio": EXPAND},
        user_attrs={"metrics": metrics, "spec": _spec(NAMES[n % 3]), "overrides": [f"optim.lr={0.01 * (n + 1):g}"],
                    "seed": n, "duration_s": 12.5})


def _bad_trials(study: optuna.Study) -> None:
    study.add_trial(optuna.trial.create_trial(
        state=optuna.trial.TrialState.FAIL, user_attrs={"error": "CUDA <oom> & \"friends\" <script>alert(1)</script>"}))
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED,
                                              intermediate_values={0: 0.1}))


# (accuracy, latency ms, MACs) of the reward study; T = 12 ms, w = -0.07.
REWARD_POINTS = [(0.70, 10.0, 200e6), (0.75, 12.0, 260e6), (0.72, 12.0, 250e6), (0.80, 20.0, 390e6),
                 (0.78, 25.0, 380e6), (0.60, 10.0, 150e6), (0.77, 14.0, 300e6), (0.74, 11.5, 240e6),
                 (0.66, 8.0, 120e6), (0.81, 30.0, 600e6), (0.55, 7.0, 100e6), (0.79, 16.0, 330e6)]
TARGET = 12.0


def _reward(acc: float, lat: float) -> float:
    return acc * (lat / TARGET) ** -0.07


def make_reward_study(path: Path, name: str = "reward <b>&\"study\"") -> optuna.Study:
    study = optuna.create_study(study_name=name, storage=f"sqlite:///{path}", direction="maximize")
    study.set_user_attr("objective", {"kind": "reward", "latency": "measured", "runtime": "onnxruntime",
                                      "target": TARGET, "constraint": "soft", "alpha": None, "beta": None})
    study.set_user_attr("space", {"name": "mnasnet"})
    study.set_user_attr("config", {"search": {"space": "mnasnet", "strategy": "evolution", "trials": 24},
                                   "objective": {"kind": "reward", "target": TARGET}})
    for n, (acc, lat, macs) in enumerate(REWARD_POINTS):
        study.add_trial(_trial(n, acc, lat, int(macs), values=[_reward(acc, lat)]))
    _bad_trials(study)
    return study


def make_multi_study(path: Path | None, *, target: float | None = 15.0) -> optuna.Study:
    """The reward study's points (plus a duplicate) as accuracy and latency objectives; ``path``
    None keeps it in memory."""
    study = optuna.create_study(study_name="multi", storage=None if path is None else f"sqlite:///{path}",
                                directions=["maximize", "minimize"])
    study.set_user_attr("objective", {"kind": "multi", "latency": "table", "runtime": "eager", "target": target})
    for n, (acc, lat, macs) in enumerate(REWARD_POINTS + [(0.80, 20.0, 390e6)]):  # a duplicate of trial 3
        study.add_trial(_trial(n, acc, lat, int(macs), values=[acc, lat]))
    _bad_trials(study)
    return study


def _hand_front() -> list[int]:
    """The accuracy-latency front of REWARD_POINTS, worked out by hand, fastest first."""
    # 10 (0.55, 7) < 8 (0.66, 8) < 0 (0.70, 10) < 7 (0.74, 11.5) < 1 (0.75, 12) < 6 (0.77, 14)
    # < 11 (0.79, 16) < 3 (0.80, 20) < 9 (0.81, 30); 2, 4, 5 are dominated.
    return [10, 8, 0, 7, 1, 6, 11, 3, 9]


def test_pareto_front_of_the_study_points() -> None:
    assert pareto_front([(a, lat) for a, lat, _ in REWARD_POINTS]) == _hand_front()


# Studies in SQLite files, built once: each costs seconds of SQLite round trips.
@pytest.fixture(scope="module")
def reward_study(tmp_path_factory: pytest.TempPathFactory) -> optuna.Study:
    return make_reward_study(tmp_path_factory.mktemp("reward") / "search.db")


@pytest.fixture(scope="module")
def multi_study(tmp_path_factory: pytest.TempPathFactory) -> optuna.Study:
    return make_multi_study(tmp_path_factory.mktemp("multi") / "search.db")


@pytest.fixture(scope="module")
def reward_report(reward_study: optuna.Study, tmp_path_factory: pytest.TempPathFactory) -> Report:
    backend = matplotlib.get_backend()
    report = write_report(reward_study, tmp_path_factory.mktemp("report") / "out", k=10)
    assert matplotlib.get_backend() == backend  # the caller's matplotlib state is untouched
    return report


# ---------------------------------------------------------------------------------------------
# best_trials


def test_best_trials_single_objective(reward_study: optuna.Study) -> None:
    study = reward_study
    want = sorted(range(len(REWARD_POINTS)), key=lambda n: -_reward(*REWARD_POINTS[n][:2]))
    assert [t.number for t in best_trials(study, k=5)] == want[:5]
    assert [t.number for t in best_trials(study, k=None)] == want  # failed and pruned are left out


def test_best_trials_minimize_breaks_ties_by_number() -> None:
    study = optuna.create_study(direction="minimize")
    for v in [3.0, 1.0, 2.0, 1.0, math.inf]:
        study.add_trial(optuna.trial.create_trial(value=v))
    assert [t.number for t in best_trials(study, k=3)] == [1, 3, 2]


def test_best_trials_multi_objective_front_by_latency(multi_study: optuna.Study) -> None:
    study = multi_study
    front = [10, 8, 0, 7, 1, 6, 11, 3, 12, 9]  # 12 duplicates 3: both are Pareto-optimal
    assert [t.number for t in best_trials(study, k=None)] == front
    # A cut keeps both ends of the front, evenly spaced.
    assert [t.number for t in best_trials(study, k=4)] == [10, 7, 11, 9]
    assert [t.number for t in best_trials(study, k=1)] == [10]
    with pytest.raises(SearchError, match="best 0 trials; ask for 1 or more"):
        best_trials(study, k=0)
    lat = [t.values[1] for t in best_trials(study, k=10)]
    assert lat == sorted(lat)


# ---------------------------------------------------------------------------------------------
# write_report: the files


class _Page(HTMLParser):
    """Rows of the best-trials table, <img> sources, every src/href, and scripts."""

    def __init__(self) -> None:
        super().__init__()
        self.rows = 0
        self.imgs: list[str] = []
        self.links: list[str] = []
        self.scripts = 0
        self.cells: list[list[str]] = []
        self.heads: list[str] = []
        self.highlighted: list[int] = []  # row indices with class "best"
        self._in_head = False
        self._in_body = False
        self._in_cell = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self.rows += 1
            self.cells.append([])
            if a.get("class") == "best":
                self.highlighted.append(self.rows - 1)
        elif tag == "th":
            self._in_head = True
            self.heads.append("")
        elif tag == "td" and self._in_body:
            self._in_cell = True
            self.cells[-1].append("")
        elif tag == "img":
            self.imgs.append(a.get("src") or "")
        elif tag == "script":
            self.scripts += 1
        for key in ("src", "href", "srcset", "action", "poster", "data"):
            if a.get(key):
                self.links.append(a[key] or "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "tbody":
            self._in_body = False
        elif tag == "td":
            self._in_cell = False
        elif tag == "th":
            self._in_head = False

    def handle_data(self, data: str) -> None:
        if self._in_cell:
            self.cells[-1][-1] += data
        elif self._in_head:
            self.heads[-1] += data


def _parse(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    return page


def _check_png(path: Path) -> Image.Image:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    img = Image.open(io.BytesIO(data))
    img.load()
    assert 500 <= img.width <= 1200 and 350 <= img.height <= 900, img.size
    assert max(ImageStat.Stat(img.convert("L")).stddev) > 10  # not a blank canvas
    return img


def _has_colour(img: Image.Image, hex_colour: str, min_pixels: int, tol: int = 30) -> bool:
    want = np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)])
    rgb = np.asarray(img.convert("RGB"), dtype=np.int16)
    near = int((np.abs(rgb - want) <= tol).all(axis=-1).sum())
    return near >= min_pixels


def test_write_report_reward_study(reward_study: optuna.Study, reward_report: Report) -> None:
    study, report = reward_study, reward_report
    assert {p.name for p in report.html.parent.iterdir()} == {
        "report.html", "pareto_latency.png", "pareto_macs.png", "best_trials.csv", "report.json"}
    lat_img = _check_png(report.pareto_latency)
    _check_png(report.pareto_macs)
    assert _has_colour(lat_img, FRONT_COLOR, 200) and _has_colour(lat_img, TARGET_COLOR, 100)

    text = report.html.read_text()
    page = _parse(text)
    assert page.scripts == 0 and "<script" not in text.lower()  # the failed trial's error is escaped
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert not re.search(r"(?:src|href)\s*=\s*[\"']?\s*(?:https?:|//)", text, re.I)
    assert "http://" not in text and "https://" not in text and "@import" not in text and "url(" not in text
    assert all(link.startswith("data:image/png;base64,") for link in page.links) and len(page.links) == 2
    assert [base64.b64decode(src.split(",", 1)[1]) for src in page.imgs] == [
        report.pareto_latency.read_bytes(), report.pareto_macs.read_bytes()]
    assert page.rows == 10 and page.highlighted == [0]
    assert page.heads == ["#", "trial", "reward", "accuracy %", "latency ms", "MACs M", "params M", "architecture"]
    want = [t.number for t in best_trials(study, k=10)]
    assert [int(row[1]) for row in page.cells] == want
    first = page.cells[0]
    acc, lat, macs = REWARD_POINTS[want[0]]
    assert first[:7] == ["1", str(want[0]), f"{_reward(acc, lat):.4f}", f"{acc * 100:.2f}", f"{lat:.2f}",
                         f"{macs / 1e6:.1f}", f"{(4_000_000 + 10_000 * want[0]) / 1e6:.2f}"]
    assert first[7].startswith(("ds_r1_k3_s1_e1_c16", "ds_r1_k3_s1_e1_c16_se0.25"))  # the spec's block strings
    assert "Search report: reward &lt;b&gt;&amp;&quot;study&quot;" in text  # the name is escaped
    assert "MnasNet reward" in text and "T = 12 ms" in text and "w = -0.07" in text
    assert re.search(r"<b>12</b><span>complete</span>.*<b>2</b><span>failed</span>.*<b>1</b><span>pruned</span>"
                     r".*<b>0</b><span>running</span>", text)
    assert "no error recorded" in text
    # no random baseline beside this evolution study: the report says so, and how to get one
    assert "Against random search" in text and "No random baseline" in text and "search.baseline=on" in text
    assert json.loads(report.json.read_text())["baseline"]["available"] is False

    rows = list(csv.DictReader(io.StringIO(report.csv.read_text())))
    assert [int(r["trial"]) for r in rows] == want
    assert float(rows[0]["accuracy"]) == acc and float(rows[0]["latency_ms"]) == lat
    assert int(rows[0]["macs"]) == int(macs) and rows[0]["arch"] == first[7]
    assert rows[0]["overrides"] == f'["optim.lr={0.01 * (want[0] + 1):g}"]'


def test_write_report_multi_objective(multi_study: optuna.Study, tmp_path: Path) -> None:
    report = write_report(multi_study, tmp_path / "out")
    page = _parse(report.html.read_text())
    assert page.rows == 10 and [int(r[1]) for r in page.cells] == [10, 8, 0, 7, 1, 6, 11, 3, 12, 9]
    assert "multi-objective" in report.html.read_text()
    # The objectives are the accuracy and latency columns, so no value columns repeat them; the
    # highlighted trial is the most accurate on the front within T = 15 ms: trial 6 (0.77, 14 ms).
    assert page.heads == ["#", "trial", "accuracy %", "latency ms", "MACs M", "params M", "architecture"]
    assert [page.cells[i][1] for i in page.highlighted] == ["6"]
    assert "evenly spaced" not in report.html.read_text()
    lat_img = _check_png(report.pareto_latency)
    assert _has_colour(lat_img, FRONT_COLOR, 200) and _has_colour(lat_img, TARGET_COLOR, 100)
    # Without a target no line is drawn: the target colour is absent.
    other = write_report(make_multi_study(None, target=None), tmp_path / "out2")
    assert not _has_colour(_check_png(other.pareto_latency), TARGET_COLOR, 100)


def test_write_report_flops_study_has_no_latency_plot_data(tmp_path: Path) -> None:
    study = optuna.create_study(study_name="flops", direction="maximize")
    study.set_user_attr("objective", {"kind": "reward", "latency": "flops", "target": 300.0})
    for n, (acc, _, macs) in enumerate(REWARD_POINTS[:5]):
        study.add_trial(_trial(n, acc, macs / 1e6, int(macs), values=[acc], latency_key="latency_mmacs"))
    report = write_report(study, tmp_path / "out", k=3)
    assert _check_png(report.pareto_latency) and _parse(report.html.read_text()).rows == 3
    assert _has_colour(Image.open(report.pareto_macs), TARGET_COLOR, 100)  # T is in MACs here
    assert not _has_colour(Image.open(report.pareto_latency), FRONT_COLOR, 50)


def test_write_report_hard_constraint_objective(tmp_path: Path) -> None:
    study = optuna.create_study(study_name="hard", direction="maximize")
    study.set_user_attr("objective", {"kind": "reward", "latency": "table", "runtime": "eager",
                                      "target": 80.0, "constraint": "hard", "alpha": None, "beta": None})
    for n, (acc, lat, macs) in enumerate(REWARD_POINTS[:3]):
        study.add_trial(_trial(n, acc, lat, int(macs), values=[acc]))
    text = write_report(study, tmp_path / "out").html.read_text()
    assert "T = 80 ms, w = α = 0 if LAT ≤ T, else β = -1 (hard constraint)" in text
    assert "predicted from a latency table (eager)" in text


def test_write_report_without_a_finished_trial(tmp_path: Path) -> None:
    study = optuna.create_study(study_name="empty one")
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL,
                                              user_attrs={"error": "proxy data not found"}))
    with pytest.raises(SearchError, match=r"study 'empty one' has no finished trial yet \(0 complete, "
                                          r"1 failed.*resume the search.*proxy data not found"):
        write_report(study, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# The HTML in a real browser


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("CI"):
        pytest.fail("chromium is not installed, and CI must install it (apt-get install chromium)")
    pytest.skip("chromium is not installed (apt-get install chromium); the browser checks need it")


def _open_in_chromium(page: Path, work: Path, *, screenshot: Path | None = None) -> tuple[str, str]:
    """(DOM after load, Chromium's log) for ``page`` in headless Chromium."""
    cmd = [_chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
           "--disable-extensions", "--disable-background-networking", "--disable-sync",
           "--disable-component-update", f"--user-data-dir={work / 'profile'}",
           # Verbose logging puts every console message (CONSOLE) and every file load on stderr.
           "--enable-logging=stderr", "--v=1", "--window-size=1280,2000", "--hide-scrollbars"]
    if screenshot is not None:
        cmd.append(f"--screenshot={screenshot}")
    cmd += ["--dump-dom", page.resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=work)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout, proc.stderr


_CONSOLE = re.compile(r":CONSOLE[:(]\d*\)?\]\s*(.*)")
_FILE_LOAD = re.compile(r"FileURLLoader::Start: (\S+)")


def page_problems(log: str, page: Path) -> list[str]:
    """What went wrong while the page loaded, from Chromium's verbose log.

    The report has no scripts, so any console message at all is the browser reporting a problem
    (an uncaught error, a Content-Security-Policy refusal of an outside resource, ...); any file
    loaded besides the page itself means the report is not self-contained (or a link is broken)."""
    problems = [f"console: {m.group(1)}" for m in map(_CONSOLE.search, log.splitlines()) if m]
    problems += [f"loaded {m.group(1)}" for m in map(_FILE_LOAD.search, log.splitlines())
                 if m and m.group(1).split("#")[0] != page.resolve().as_uri()]
    return problems


@pytest.fixture(scope="module")
def rendered(reward_report: Report, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The reward study's report as Chromium renders it."""
    tmp = tmp_path_factory.mktemp("browser")
    report = reward_report
    shot = tmp / "shot.png"
    dom, log = _open_in_chromium(report.html, tmp, screenshot=shot)
    return {"report": report, "dom": dom, "log": log, "shot": shot}


def test_browser_renders_the_table_and_both_plots(rendered: dict[str, Any]) -> None:
    page = _parse(rendered["dom"])
    assert page.rows == 10
    assert len(page.imgs) == 2 and all(src.startswith("data:image/png;base64,") for src in page.imgs)
    assert "Search report: reward" in rendered["dom"] and "MnasNet reward" in rendered["dom"]


def test_browser_screenshot_is_not_blank(rendered: dict[str, Any]) -> None:
    img = Image.open(rendered["shot"])
    assert img.size == (1280, 2000)
    assert max(ImageStat.Stat(img.convert("L")).stddev) > 20
    # The plots rendered: their front and target colours are on screen (scaled, so a tolerance).
    assert _has_colour(img, FRONT_COLOR, 150, tol=40) and _has_colour(img, TARGET_COLOR, 60, tol=40)


def test_browser_reports_no_console_errors_and_loads_nothing(rendered: dict[str, Any]) -> None:
    assert "FileURLLoader::Start" in rendered["log"]  # the log we read is the verbose one
    assert page_problems(rendered["log"], rendered["report"].html) == []


def test_console_error_detector_catches_errors(tmp_path: Path, rendered: dict[str, Any]) -> None:
    # A page that throws and has a broken image: both must be flagged.
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><p>x</p><script>throw new Error('deliberate-failure')</script>"
                   "<img src=\"missing.png\">")
    _, log = _open_in_chromium(bad, tmp_path)
    problems = page_problems(log, bad)
    assert any("Uncaught Error: deliberate-failure" in p for p in problems), problems
    assert any(p.startswith("loaded ") and p.endswith("missing.png") for p in problems), problems
    # The report with an outside image and font injected: its policy refuses them, and says so.
    html = rendered["report"].html.read_text().replace(
        "</main>", "<img src=\"https://example.invalid/x.png\"><link rel=\"stylesheet\" "
                   "href=\"https://fonts.example.invalid/f.css\"></main>")
    tampered = tmp_path / "tampered.html"
    tampered.write_text(html)
    work = tmp_path / "t"
    work.mkdir()
    _, log = _open_in_chromium(tampered, work)
    problems = page_problems(log, tampered)
    assert any("example.invalid/x.png" in p for p in problems), problems
    assert any("fonts.example.invalid" in p for p in problems), problems
