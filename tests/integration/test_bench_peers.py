"""The benchmark's instruments: the LitServe peer answers exactly as the naive endpoint does (same samples
for the same seed and steps, also when its batches mix step counts), wrk and the Python fallback drive
both, and the peer table's report computes its ratios and ranges. Real processes, the eager engine."""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from loadtests import peer_table, wrkload
from loadtests.procs import Proc, free_port, start_baselines

needs_litserve = pytest.mark.skipif(
    importlib.util.find_spec("litserve") is None, reason="litserve not installed (pip install -e '.[bench]')"
)
needs_wrk = pytest.mark.skipif(
    shutil.which("wrk") is None, reason="wrk not installed (scripts/install_sysdeps.sh)"
)


@pytest.fixture(scope="module")
def peer():
    port = free_port()
    cmd = [sys.executable, "-m", "loadtests.litserve_peer", "--engine", "eager", "--port", str(port)]
    proc = Proc([*cmd, "--max-batch-size", "8", "--batch-timeout", "0.02"], port, "/health", timeout=120)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def naive():
    proc = start_baselines("digits", "eager")
    yield proc
    proc.stop()


def post(url: str, body: dict) -> dict:
    r = httpx.post(url, json=body, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


BODIES = [
    {"steps": k, "num_samples": n, "seed": 100 + i, **({"class_label": 3} if i % 3 == 0 else {})}
    for i, (k, n) in enumerate([(1, 1), (2, 8), (4, 1), (3, 2), (1, 8), (2, 1), (4, 3), (3, 1)])
]


@needs_litserve
def test_peer_matches_naive_in_mixed_batches(peer, naive):
    want = [post(naive.url + "/naive", b) for b in BODIES]
    with ThreadPoolExecutor(len(BODIES)) as pool:  # concurrent: LitServe batches them, steps mixed
        got = list(pool.map(lambda b: post(peer.url + "/v1/generate", b), BODIES))
    for b, w, g in zip(BODIES, want, got, strict=True):
        assert g["images"] == w["images"], b
        assert (g["steps"], g["seed"], g["num_samples"]) == (b["steps"], b["seed"], b["num_samples"])
        assert g["class_labels"] == w["class_labels"]
        assert set(w) - {"timings"} <= set(g)


@needs_litserve
def test_peer_rejects_bad_input(peer):
    for bad in ({"steps": 0}, {"num_samples": 65}, {"nope": 1}):
        assert httpx.post(peer.url + "/v1/generate", json=bad, timeout=10).status_code == 422


@needs_litserve
@needs_wrk
def test_wrk_drives_peer_and_naive(peer, naive):
    for proc, path in ((peer, "/v1/generate"), (naive, "/naive")):
        r = wrkload.run(proc.port, path, peer_table.bodies("d"), 4, 1, generator="wrk")
        assert r.generator == "wrk" and r.ok > 10 and not r.errors, r
        assert 0 < r.p50_ms <= r.p99_ms


def test_httpload_fallback(naive):
    r = wrkload.run(naive.port, "/naive", peer_table.bodies("b"), 2, 1, generator="httpload")
    assert r.generator == "httpload" and r.ok > 5 and not r.errors
    assert wrkload.pick_generator("httpload") == "httpload"


def test_mixed_bodies_are_uniform():
    steps = [b["steps"] for b in peer_table.bodies("e")]
    assert sorted(set(steps)) == [1, 2, 3, 4] and all(steps.count(k) == 16 for k in (1, 2, 3, 4))
    assert {b["num_samples"] for b in peer_table.bodies("e")} == {8}


def case(req_s: float, p50: float, p99: float, c1_p50: float) -> dict:
    return {"c32": {"req_s": req_s, "p50_ms": p50, "p99_ms": p99}, "c1": {"p50_ms": c1_p50}}


def test_report_ratios_and_ranges():
    def rep(flowmap_rps: float) -> dict:
        return {
            "a": {
                "flowmap": case(flowmap_rps, 10, 20, 1.1),
                "litserve-8": case(800, 10, 40, 7.0),
                "litserve-32": case(1000, 12, 30, 8.0),
                "naive": {"error": "did not start"},
            }
        }

    runs = [rep(1500), rep(1600)]
    d = peer_table.derived(runs[0]["a"])
    assert d["best"] == "litserve-32" and d["vs_ls"] == 1.5 and d["ls_c1_p50"] == 7.0
    assert d["vs_naive"] is None and d["p99_vs_ls"] == 20 / 30
    a = argparse.Namespace(
        model="digits",
        engine="onnxruntime",
        generator="wrk",
        seconds=8,
        p50_seconds=3,
        repeat=2,
        batch_timeout=0.005,
    )
    assert peer_table.report(a, runs, {}).count("| n/a | n/a | n/a |") == 1  # no bare timing: no shares
    # the bare engine made 1,600 then 2,000 rows/s: 1x1 rows x steps are req/s, so shares 94% and 80%
    runs[0]["a"]["bare"], runs[1]["a"]["bare"] = {"rows_s": 1600.0, "batch": 64}, {"rows_s": 2000.0}
    assert peer_table.derived(runs[0]["a"], "a")["share"] == 1500 / 1600
    assert peer_table.derived(runs[0]["a"], "a")["ls_share"] == 1000 / 1600
    text = peer_table.report(a, runs, {})
    row = next(ln for ln in text.splitlines() if ln.startswith("| 1 sample, 1 step | 1500"))
    assert "| 1500–1600 |" in row and "| 1.50–1.60x |" in row and "n/a" in row
    assert "| 1600–2000 | 80%–94% | 50%–62% |" in row
    assert ">= 1.5x LitServe at equal or lower p99: met" in text
    assert "p50 within 1.15x naive: n/a" in text
    assert "keeps >= 90% of the bare engine: NOT met" in text  # the worst repeat (80%)


def test_row_steps_count_rows_and_mean_steps():
    assert [peer_table.row_steps(k) for k in "abcde"] == [1, 16, 4, 2.5, 20]


def test_ab_loads_two_servers_in_turn_and_reads_their_caps(capsys, tmp_path):
    """loadtests.ab: both servers up, loaded alternately; each round reports both, their batch caps (B's
    flags fix its cap at 32) and the ratio; the JSON keeps every round."""
    from loadtests import ab

    out = tmp_path / "ab.json"
    args = ["--model", "digits", "--workload", "a", "--rounds", "2", "--seconds", "1", "--connections", "2"]
    flags = ["--a-args", "--engine eager", "--b-args", "--engine eager --batch-knee 0 --max-batch-size 32"]
    assert ab.main([*args, *flags, "--warm-seconds", "0.5", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| 1 |" in text and "| 2 |" in text and "B / A:" in text, text
    rounds = json.loads(out.read_text())["rounds"]
    assert len(rounds) == 2 and all(r["A"]["ok"] > 0 and r["B"]["ok"] > 0 for r in rounds)
    assert all(r["B"]["cap"] == 32 and r["A"]["cap"] >= 8 for r in rounds)


def test_ab_open_loop_offers_both_the_same_schedule_and_runs_b_from_a_tree(capsys, tmp_path):
    """--mix/--rate: each round offers A and B the same Poisson schedule and reports attainment, the
    answers that were not 200 and p99; --b-tree starts B from a checkout's directory (this one here)."""
    from loadtests import ab

    root = str(Path(__file__).resolve().parents[2])
    mix = tmp_path / "m.json"
    mix.write_text(json.dumps({"name": "m", "slo_ms": 2000, "request": [{"steps": 1, "num_samples": 1}]}))
    out = tmp_path / "ab.json"
    args = ["--model", "digits", "--mix", str(mix), "--mix-steps", "auto", "--rate", "20", "--rounds", "2"]
    args += ["--seconds", "1", "--warm-seconds", "0.5", "--b-tree", root, "--a-args", "--engine eager"]
    assert ab.main([*args, "--b-args", "--engine eager", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "open loop at 20 req/s" in text and f"(from {root})" in text and "| 2 |" in text, text
    rounds = json.loads(out.read_text())["rounds"]
    assert [r["A"]["sent"] for r in rounds] == [r["B"]["sent"] for r in rounds]  # one schedule per round
    assert all(r[n]["attainment"] > 0.5 and r[n]["not_200"] == 0 for r in rounds for n in "AB")


@pytest.mark.parametrize(
    "flags, problem",
    [
        (["--mix", "mixed"], "go together"),
        (["--rate", "5"], "go together"),
        (["--b-tree", "/"], "no server/"),
        (["--mix-steps", "2"], "with --mix"),
        (["--mix", "mixed", "--rate", "5", "--mix-steps", "two"], "a step count or auto"),
        (["--mix", "no_such_mix", "--rate", "5"], "not found"),
    ],
)
def test_ab_refuses_half_an_open_loop_and_a_tree_that_is_not_a_checkout(flags, problem, capsys):
    from loadtests import ab

    with pytest.raises(SystemExit):
        ab.main(flags)
    assert problem in capsys.readouterr().err


def test_bare_engine_times_the_best_batch_and_names_a_failure():
    """The bare-engine timing runs loadtests.bare_engine in a fresh process; an engine that cannot load
    gives its one-line reason, which the report turns into n/a, not a crash."""
    got = peer_table.bare_engine(argparse.Namespace(model="digits", engine="eager"), seconds=0.02)
    assert got["rows_s"] == max(got["by_batch"].values()) > 0
    assert got["by_batch"][got["batch"]] == got["rows_s"]
    assert set(got["by_batch"]) == {1, 2, 4, 8, 16, 32, 64, 128}
    bad = peer_table.bare_engine(argparse.Namespace(model="digits", engine="nonesuch"), seconds=0.02)
    assert "unknown engine 'nonesuch'" in bad["error"] and "Traceback" not in bad["error"]


def test_flowmaps_share_counts_the_rows_it_ran_and_the_peers_their_answers():
    """On a mix, flowmap's refusals fall more on 4-step requests: its share comes from the rows it counted
    (/metrics), not its 2xx answers x the bodies' 2.5 steps; a peer (no count) from its answers."""
    rep = {
        "bare": {"rows_s": 400.0},
        "flowmap": {"c32": {"req_s": 150.0, "row_steps_s": 300.0}},
        "litserve-8": {"c32": {"req_s": 100.0}},
    }
    assert peer_table.share(rep, "flowmap", "d") == 300 / 400
    assert peer_table.share(rep, "litserve-8", "d") == 100 * 2.5 / 400


def test_bare_engine_cli_refuses_bad_batches(capsys):
    from loadtests import bare_engine

    with pytest.raises(SystemExit):
        bare_engine.main(["--batches", "8,x"])
    assert "--batches must be comma-separated integers" in capsys.readouterr().err
