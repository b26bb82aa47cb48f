"""benchmarks.suite: the schema of results.json / results.md, row isolation, incremental writes,
and the README table regenerated from a results.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import report, rows, suite

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The test rows (two real, three failing, one peeking) through the suite, in one run."""
    import os

    out = tmp_path_factory.mktemp("suite-out")
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "SUITE_TEST_OUT")}
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), saved["PYTHONPATH"]) if p)
    os.environ["SUITE_TEST_OUT"] = str(out)
    try:
        import suite_rows

        results = suite.run_suite(list(suite_rows.ROWS), "cpu", out, time_limit=400, rows_module="suite_rows",
                                  command="test", min_row_s=1)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return out, results


def test_results_json_schema(run):
    out, results = run
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(results, default=str))
    assert on_disk["schema"] == suite.SCHEMA and on_disk["size"] == "cpu" and on_disk["finished"]
    assert {"python", "jax", "torch", "transformers", "flax", "grain"} <= set(on_disk["versions"])
    assert on_disk["device"]["jax_platform"] == "cpu"
    assert [r["id"] for r in on_disk["rows"]] == ["sae_relu", "raises", "killed", "hangs", "cache_read", "peek"]
    for row in on_disk["rows"]:
        assert {"id", "work", "peer", "target", "status", "pass", "target_applies", "checks", "seconds"} <= set(row)
        assert row["target_applies"] is False  # targets bind at --size gpu only


def test_ok_rows_carry_both_figures_their_ratio_and_graded_checks(run):
    _, results = run
    by_id = {r["id"]: r for r in results["rows"]}
    for row_id in ("sae_relu", "cache_read"):
        row = by_id[row_id]
        assert row["status"] == "ok", row.get("error")
        ours, peer = row["figure"]["value"], row["peer_figure"]["value"]
        assert ours > 0 and peer > 0 and row["figure"]["unit"] and row["peer_figure"]["unit"]
        assert row["ratio"] == pytest.approx(ours / peer)
    relu = {c["target"]: c for c in by_id["sae_relu"]["checks"]}
    assert relu["ratio >= 2.4"]["pass"] == (by_id["sae_relu"]["ratio"] >= 2.4)
    assert relu["ours >= 600k tokens/s"]["pass"] is None  # an absolute target is n/a at cpu size
    assert by_id["cache_read"]["checks"][0]["pass"] is None


def test_a_failing_row_is_recorded_and_the_suite_goes_on(run):
    _, results = run
    by_id = {r["id"]: r for r in results["rows"]}
    assert by_id["raises"]["status"] == "error" and "RESOURCE_EXHAUSTED" in by_id["raises"]["error"]
    assert "MemoryError" in by_id["raises"]["traceback"]
    assert by_id["killed"]["status"] == "error" and "signal 9" in by_id["killed"]["error"]
    assert by_id["hangs"]["status"] == "timeout" and by_id["hangs"]["seconds"] < 30
    assert all(by_id[r]["pass"] is False for r in ("raises", "killed", "hangs"))
    assert by_id["cache_read"]["status"] == by_id["peek"]["status"] == "ok"  # rows after the failures ran


def test_results_json_is_rewritten_after_every_row(run):
    _, results = run
    peek = next(r for r in results["rows"] if r["id"] == "peek")
    assert peek["details"]["rows_on_disk"] == ["sae_relu", "raises", "killed", "hangs", "cache_read"]


def test_results_md_has_every_row(run):
    out, results = run
    md = (out / "results.md").read_text()
    assert "| row | work measured | sauce-jax | peer, same run | ratio |" in md
    for row in results["rows"]:
        assert f"| {row['id']} |" in md
    assert "**timeout**" in md and "**error**" in md
    assert (out / "logs" / "killed.log").is_file()


def test_rows_left_no_time_are_recorded_not_dropped(tmp_path):
    import os

    os.environ["SUITE_TEST_OUT"] = str(tmp_path)
    try:
        results = suite.run_suite([rows.ROWS_BY_ID["clip"], rows.ROWS_BY_ID["sae_relu"]], "cpu", tmp_path,
                                  time_limit=5, command="test")
    finally:
        os.environ.pop("SUITE_TEST_OUT")
    assert [(r["id"], r["status"]) for r in results["rows"]] == [("clip", "not run"), ("sae_relu", "not run")]


def test_every_row_of_the_table_has_both_sizes():
    assert [r.id for r in rows.ROWS] == ["clip", "mllama", "siglip", "sae_relu", "sae_topk", "sae_topk_auxk",
                                         "sae_topk_auto", "sae_batchtopk", "sae_topk_1m", "unlearn", "extract",
                                         "cache_read", "recipe", "study"]
    for row in rows.ROWS:
        assert set(row.params) == set(row.budget_s) == set(rows.SIZES), row.id


def test_readme_table_is_regenerated_between_the_markers(run, tmp_path):
    _, results = run
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n## Speed\n\nbefore\n\n{report.BEGIN}\nold table\n{report.END}\n\nafter\n")
    report.update_readme(readme, results, "benchmarks/results/x.json")
    text = readme.read_text()
    assert "old table" not in text and text.startswith("# x\n\n## Speed\n\nbefore\n\n") and text.endswith("\n\nafter\n")
    assert report.render_table(results) in text and "benchmarks/results/x.json" in text


def test_a_stopped_suite_kills_its_row_and_keeps_its_results(tmp_path):
    """SIGTERM to the suite (what `timeout` sends): the running row's process dies with it and
    results.json says which row was interrupted."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out, work = tmp_path / "out", tmp_path / "work"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.suite", "--size", "cpu", "--out", str(out), "--work",
                             str(work), "--rows-module", "suite_rows", "--rows", "waits"],
                            cwd=suite.REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pid_file = work / "waiting.pid"
    deadline = time.monotonic() + 60
    while not pid_file.is_file() or not pid_file.read_text():
        assert time.monotonic() < deadline and proc.poll() is None, "the row never started"
        time.sleep(0.1)
    row_pid = int(pid_file.read_text())
    proc.send_signal(signal.SIGTERM)
    try:
        assert proc.wait(timeout=30) != 0
        results = json.loads((out / "results.json").read_text())
        assert [(r["id"], r["status"]) for r in results["rows"]] == [("waits", "interrupted")]
        assert results["finished"]
        time.sleep(0.2)
        with pytest.raises(ProcessLookupError):
            os.kill(row_pid, 0)
    finally:  # never leave the row behind, whatever failed
        for pid in (proc.pid, row_pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
