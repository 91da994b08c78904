"""Two flowmap servers that differ only in flags, loaded in turn: an A/B of a server flag on a noisy box.

Both servers stay up for the whole run and are loaded one at a time (wrk, closed loop), alternating
A, B, B, A, ... so drift in the machine's speed hits both alike; each round prints both and their ratio,
then the ranges. Each server's `flowmap_batch_cap_rows` is read after every round.

    python -m loadtests.ab --model digits --workload b --b-args "--batch-free-ms 0" --rounds 6 --seconds 5

Workloads are loadtests.peer_table's (a: 1x1, b: 8x2, c: 1x4, d: mixed 1-4 steps x1, e: mixed x8).

Open loop instead (`--mix`, `--rate`): each turn offers the same Poisson schedule (seed: the round) of a
request mix to both (plus an unrecorded 1 s lead-in), and reports SLO attainment, the answers that were
not 200 (and, at the end, why: which bound refused, and where) and p99 (loadtests.openloop). `--b-tree`
runs B from another checkout, for an A/B of a code change:

    git worktree add /tmp/before HEAD~1
    python -m loadtests.ab --model mnist --mix sweep_mnist --mix-steps auto --rate 14 --b-tree /tmp/before
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from collections import Counter
from pathlib import Path

import httpx

from loadtests import openloop, wrkload
from loadtests.mix import MixError, load_mix
from loadtests.peer_table import WORKLOADS, bodies, span
from loadtests.procs import Proc, free_port

WARM_SEED = 10_000  # the warm-up's schedule (rounds use their own number)
CAP = re.compile(r'^flowmap_batch_cap_rows\{[^}]*model="([^"]+)"[^}]*\}\s+(\S+)', re.M)


def start(model: str, flags: list[str], tree: str | None = None) -> Proc:
    port = free_port()
    cmd = [sys.executable, "-m", "server", "--model", model, "--port", str(port), *flags]
    return Proc(cmd, port, "/readyz", cwd=tree)


def batch_cap(url: str, model: str) -> int | None:
    text = httpx.get(url + "/metrics", timeout=5).text
    caps = {m: float(v) for m, v in CAP.findall(text)}
    return int(caps[model]) if model in caps else None


def load(srv: Proc, a: argparse.Namespace, requests, seconds: float, seed: int = 0) -> dict:
    """One turn on one server: wrk closed loop (req/s, p99), or with --mix the open-loop schedule `seed`
    (attainment, non-200 answers, p99); and the server's batch cap."""
    if a.mix is None:
        res = wrkload.run(srv.port, "/v1/generate", requests, a.connections, seconds).as_dict()
        if res.get("errors"):  # non-2xx answers or socket errors: not what the ratio compares
            print(f"{srv.url}: errors {res['errors']}", file=sys.stderr)
    else:
        plan = openloop.plan_mix(requests, a.rate, seconds + 1.0, seed, a.classes, srv.url + "/v1/generate")
        res = openloop.summarize(openloop.drive(srv.url, plan), 1.0)
        res["not_200"] = sum(n for code, n in res["statuses"].items() if code != "200")
    return {**res, "cap": batch_cap(srv.url, a.model)}


def one_round(r: int, servers: dict[str, Proc], requests, a: argparse.Namespace) -> dict:
    """Round r: each server loaded in turn (A first on even rounds); their loads and caps, one table row."""
    order = ("A", "B") if r % 2 == 0 else ("B", "A")
    res = {name: load(servers[name], a, requests, a.seconds, seed=r) for name in order}
    A, B = res["A"], res["B"]
    if a.mix is None:
        cells = [
            f"{A['req_s']:.0f}",
            f"{A['p99_ms']:.1f}",
            A["cap"],
            f"{B['req_s']:.0f}",
            f"{B['p99_ms']:.1f}",
        ]
        cells += [B["cap"], f"{B['req_s'] / max(A['req_s'], 1e-9):.2f}x"]
    else:
        cells = [f"{A['attainment']:.3f}", A["not_200"], f"{A['p99_ms']:.0f}", A["cap"]]
        cells += [f"{B['attainment']:.3f}", B["not_200"], f"{B['p99_ms']:.0f}", B["cap"]]
    print(f"| {r + 1} | " + " | ".join(str(c) for c in cells) + " |", flush=True)
    return res


def header(a: argparse.Namespace) -> str:
    if a.mix is None:
        cols = ["A req/s", "A p99 ms", "A cap", "B req/s", "B p99 ms", "B cap", "B / A"]
    else:
        cols = [f"{n} {c}" for n in "AB" for c in ("attainment", "not 200", "p99 ms", "cap")]
    return f"| round | {' | '.join(cols)} |\n|---:|" + "---:|" * len(cols)


def summary(rows: list[dict], mix: bool = False) -> None:
    if mix:
        for name in ("A", "B"):
            att, p99 = [r[name]["attainment"] for r in rows], [r[name]["p99_ms"] for r in rows]
            bad = sum(r[name]["not_200"] for r in rows)
            print(f"{name}: attainment {span(att, '.3f')}, {bad} not 200 in all, p99 {span(p99)} ms")
            why = Counter()
            for r in rows:
                why.update(r[name].get("reasons", {}))
            for text, n in why.most_common():  # which bound refused, and where (API process or core)
                print(f"  {n} x {text}")
        return
    for name in ("A", "B"):
        rps, p99 = [r[name]["req_s"] for r in rows], [r[name]["p99_ms"] for r in rows]
        print(f"{name}: {span(rps)} req/s, p99 {span(p99, '.1f')} ms")
    print(f"B / A: {span([r['B']['req_s'] / max(r['A']['req_s'], 1e-9) for r in rows], '.2f')}x")


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, object, str]:
    """The flags, checked; the requests (wrk bodies, or a mix) and a line saying what they are."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="digits")
    p.add_argument("--workload", default="b", choices=sorted(WORKLOADS))
    p.add_argument("--a-args", default="", help="flags of server A (default: none, the defaults)")
    p.add_argument("--b-args", default="", help="flags of server B")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--warm-seconds", type=float, default=3.0, help="unrecorded load on each before round 1")
    p.add_argument("--b-tree", default=None, help="run server B from this checkout (an A/B of code)")
    p.add_argument("--mix", default=None, help="open loop: a request mix (loadtests/mixes) instead of wrk")
    p.add_argument("--mix-steps", default=None, help="with --mix: every entry at these steps (or auto)")
    p.add_argument("--rate", type=float, default=None, help="with --mix: offered requests per second")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    if a.rounds < 1 or a.seconds <= 0 or a.connections < 1:
        p.error("--rounds, --seconds and --connections must be positive")
    if (a.mix is None) != (a.rate is None) or (a.rate is not None and a.rate <= 0):
        p.error("--mix and --rate go together (open loop), --rate > 0")
    if a.mix_steps is not None and (a.mix is None or not (a.mix_steps == "auto" or a.mix_steps.isdigit())):
        p.error(f"--mix-steps {a.mix_steps!r}: a step count or auto, with --mix")
    if a.b_tree is not None and not (Path(a.b_tree) / "server").is_dir():
        p.error(f"--b-tree {a.b_tree}: not a checkout of this project (no server/ in it)")
    if a.mix is None:
        return a, bodies(a.workload), f"{WORKLOADS[a.workload][0]}, wrk -c{a.connections}"
    try:
        requests = load_mix(a.mix)
    except MixError as e:
        p.error(str(e))
    if a.mix_steps is not None:
        requests = requests.with_steps(a.mix_steps if a.mix_steps == "auto" else int(a.mix_steps))
    return a, requests, f"mix {requests.name}, open loop at {a.rate:g} req/s"


def main(argv: list[str] | None = None) -> int:
    a, requests, what = parse(argv)
    servers: dict[str, Proc] = {}
    try:
        for name, flags, tree in (("A", a.a_args, None), ("B", a.b_args, a.b_tree)):
            servers[name] = start(a.model, shlex.split(flags), tree)
        a.classes = openloop.model_info(servers["A"].url)["num_classes"] if a.mix else 0
        for srv in servers.values():
            load(srv, a, requests, a.warm_seconds, seed=WARM_SEED)
        print(f"{a.model}, {what}, {a.seconds:g} s per turn")
        tree = f" (from {a.b_tree})" if a.b_tree else ""
        print(f"A: {a.a_args or '(defaults)'}\nB: {a.b_args or '(defaults)'}{tree}")
        print(header(a))
        rows = [one_round(r, servers, requests, a) for r in range(a.rounds)]
        summary(rows, mix=a.mix is not None)
    finally:
        for name, srv in servers.items():
            changes = [ln for ln in srv.stderr_tail(1_000_000).splitlines() if "batches up to" in ln]
            print(f"{name}'s batch caps:" + "".join(f"\n  {ln}" for ln in changes))
            srv.stop()
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"args": vars(a), "rounds": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
