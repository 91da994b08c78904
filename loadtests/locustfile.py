"""Locust scenario for a running flowmap server: generations from a request mix, as REST clients send them.

    locust -f loadtests/locustfile.py --host http://127.0.0.1:8000                      # web UI on :8089
    locust -f loadtests/locustfile.py --host http://127.0.0.1:8000 --headless -u 32 -r 32 -t 60s \
        --mix loadtests/mixes/mixed.toml --keep-samples runs/locust-samples --csv runs/locust
    python -m loadtests.score runs/locust-samples                                       # score what came back

`--mix FILE` (or FLOWMAP_LOAD_MIX): the request mix of loadtests/mix.py (the open-loop generator and the
sweep read the same files). Without one, FLOWMAP_LOAD_STEPS ("1,2,3,4": drawn uniformly),
FLOWMAP_LOAD_SAMPLES (8) and FLOWMAP_LOAD_OUTPUT (png) make the mix. FLOWMAP_LOAD_MODEL: the model
(default: the server's); FLOWMAP_API_KEY: sent as a bearer token when set.

Stats: each step count asked is its own entry ("generate steps=K", "generate steps=auto"); custom entries
per step count *used* ("used steps=K", type STEPS: what "auto" chose) and per SLO miss ("missed steps=K",
type SLO: 200s later than their entry's slo_ms); Locust's "Aggregated" row counts these entries too,
so read throughput from the POST rows. `--keep-samples DIR` (npy output) writes the samples
received, with seeds, steps and requested classes, to DIR/locust-PID.npz when the run stops.
"""

from __future__ import annotations

import os
import random
import sys

from locust import FastHttpUser, between, events, task

sys.path.insert(
    0, os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)  # `loadtests` is not installed
from loadtests.mix import load_mix, parse_mix  # noqa: E402

KEY = os.environ.get("FLOWMAP_API_KEY")
MODEL = os.environ.get("FLOWMAP_LOAD_MODEL") or None
KEPT: list[dict] = []


@events.init_command_line_parser.add_listener
def _options(parser) -> None:
    parser.add_argument("--mix", default=os.environ.get("FLOWMAP_LOAD_MIX", ""), help="request mix file")
    parser.add_argument("--keep-samples", default="", help="folder for the received samples (npy output)")


def env_mix():
    steps = [int(k) for k in os.environ.get("FLOWMAP_LOAD_STEPS", "1,2,3,4").split(",") if k.strip()]
    n, out = int(os.environ.get("FLOWMAP_LOAD_SAMPLES", "8")), os.environ.get("FLOWMAP_LOAD_OUTPUT", "png")
    reqs = [{"steps": k, "num_samples": n, "output": out, "classes": "server"} for k in steps]
    return parse_mix({"name": "env", "request": reqs})


@events.test_stop.add_listener
def _save(environment, **_) -> None:
    folder = environment.parsed_options.keep_samples if environment.parsed_options else ""
    if folder and KEPT:
        from loadtests import score

        score.save(os.path.join(folder, f"locust-{os.getpid()}.npz"), KEPT)
        KEPT.clear()


class GenerateUser(FastHttpUser):
    """One closed-loop client: POST /v1/generate from the mix, check the answer, repeat (almost no wait)."""

    wait_time = between(0.0, 0.01)

    def on_start(self) -> None:
        opts = self.environment.parsed_options
        self.mix = load_mix(opts.mix) if opts and opts.mix else env_mix()
        self.keep = bool(opts and opts.keep_samples)
        self.headers = {"Authorization": f"Bearer {KEY}"} if KEY else {}
        models = self.client.get("/v1/models", headers=self.headers).json()
        name = MODEL or models["default"]
        self.classes = next(m["num_classes"] for m in models["models"] if m["name"] == name)
        self.rng = random.Random()
        self.queue: list[tuple[int, dict]] = []

    def next_body(self) -> tuple[int, dict]:
        """The next (mix entry, body): drawn 256 at a time so "cycle" classes stay balanced per user."""
        if not self.queue:
            picks = self.mix.draw(256, self.rng)
            bodies = self.mix.bodies(picks, self.rng.randrange(2**40), self.classes)
            self.queue = list(zip(picks, bodies, strict=True))[::-1]
        k, body = self.queue.pop()
        return k, {**body, "model": MODEL} if MODEL else body

    @task
    def generate(self) -> None:
        k, body = self.next_body()
        entry = self.mix.entries[k]
        with self.client.post(
            "/v1/generate",
            json=body,
            headers=self.headers,
            name=f"generate {entry.label}",
            catch_response=True,
        ) as r:
            if r.status_code != 200:
                r.failure(f"status {r.status_code}: {r.text[:200]}")
                return
            got = r.json()
            if self.check(r, got, body):
                self.record(got, body, entry, r.request_meta["response_time"])

    def check(self, r, got: dict, body: dict) -> bool:
        n = len(got["images"] or []) if got["output"] == "png" else got["num_samples"]
        if (body["steps"] != "auto" and got["steps"] != body["steps"]) or n != body["num_samples"]:
            r.failure(f"asked {body['steps']} steps x {body['num_samples']}, got {got['steps']} x {n}")
            return False
        return True

    def record(self, got: dict, body: dict, entry, ms: float) -> None:
        fire = self.environment.events.request.fire
        fire(request_type="STEPS", name=f"used steps={got['steps']}", response_time=ms, response_length=0)
        if ms > entry.slo_ms:
            fire(request_type="SLO", name=f"missed {entry.label}", response_time=ms, response_length=0)
        if self.keep and got.get("array") is not None:
            from loadtests.openloop import npy_decode

            KEPT.append(
                {
                    "seed": got["seed"],
                    "asked": body["steps"],
                    "steps": got["steps"],
                    "labels": got["class_labels"],
                    "x": npy_decode(got["array"]),
                }
            )
