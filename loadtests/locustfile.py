"""Locust scenario for a running flowmap server: a mix of 1-4 step generations, as REST clients send them.

    locust -f loadtests/locustfile.py --host http://127.0.0.1:8000                      # web UI on :8089
    locust -f loadtests/locustfile.py --host http://127.0.0.1:8000 --headless -u 32 -r 32 -t 60s \
        --csv runs/locust                                                               # CSV per step count

Environment: FLOWMAP_LOAD_STEPS ("1,2,3,4": step counts drawn uniformly), FLOWMAP_LOAD_SAMPLES (8),
FLOWMAP_LOAD_MODEL (the server's default), FLOWMAP_LOAD_OUTPUT (png), FLOWMAP_API_KEY (sent as a
bearer token when set). Each step count is its own Locust entry ("generate steps=K"), so the stats
table is latency against step count. `python -m loadtests.bench_server` is the scripted benchmark with
baselines; this file is for interactive and long-running load.
"""

from __future__ import annotations

import os
import random

from locust import FastHttpUser, between, task

STEPS = [int(k) for k in os.environ.get("FLOWMAP_LOAD_STEPS", "1,2,3,4").split(",") if k.strip()]
SAMPLES = int(os.environ.get("FLOWMAP_LOAD_SAMPLES", "8"))
MODEL = os.environ.get("FLOWMAP_LOAD_MODEL") or None
OUTPUT = os.environ.get("FLOWMAP_LOAD_OUTPUT", "png")
KEY = os.environ.get("FLOWMAP_API_KEY")


class GenerateUser(FastHttpUser):
    """One closed-loop client: POST /v1/generate, check the answer, repeat with almost no think time."""

    wait_time = between(0.0, 0.01)

    def on_start(self) -> None:
        self.headers = {"Authorization": f"Bearer {KEY}"} if KEY else {}
        self.rng = random.Random()

    @task
    def generate(self) -> None:
        steps = self.rng.choice(STEPS)
        body = {"steps": steps, "num_samples": SAMPLES, "seed": self.rng.randrange(2**31), "output": OUTPUT}
        if MODEL:
            body["model"] = MODEL
        with self.client.post(
            "/v1/generate",
            json=body,
            headers=self.headers,
            name=f"generate steps={steps}",
            catch_response=True,
        ) as r:
            if r.status_code != 200:
                r.failure(f"status {r.status_code}: {r.text[:200]}")
                return
            got = r.json()
            n = len(got["images"] or []) if OUTPUT == "png" else SAMPLES
            if got["steps"] != steps or n != SAMPLES:
                r.failure(f"asked {steps} steps x {SAMPLES}, got {got['steps']} x {n}")
