"""OpenAI's images route over a real engine core in this process (the toy core of test_service_app, whose
fake engine is exact whatever the batch, and the shipped unconditional digits model): the samples are
`flowmap sample`'s, the OpenAI fields and v1's extensions are checked as v1 checks them, errors have
OpenAI's shape, and the route is recorded like the others."""

from __future__ import annotations

import asyncio
import base64
import io
import re
import time
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
from PIL import Image

from flowmap.labels import DIGIT_NAMES, class_names
from server.api_process.app import create_app
from server.api_process.encode import to_uint8_nhwc
from server.api_process.service import Service
from server.common import messages as m
from server.common.metrics import Metrics
from server.common.settings import ServerSettings
from tests.unit.server.inprocess import serve
from tests.unit.server.test_service_app import INFO, InProcessCore, reference

ROUTE = "/v1/images/generations"
NAMES = [f"c{i}" for i in range(10)]  # the toy model's class names


def make_stack(**overrides):
    kw = dict(max_steps=4, max_samples=16, max_queue=2, request_timeout_ms=2000, max_body_bytes=4096)
    settings = ServerSettings(**(kw | overrides))
    core, metrics = InProcessCore(settings), Metrics()
    service = Service(settings, [core], metrics)
    service.on_states(m.CoreStates([{"up": True, "generation": 1, "info": dict(INFO, class_names=NAMES)}]))
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(service, metrics)), base_url="http://t"
    )
    return SimpleNamespace(service=service, core=core, client=client, metrics=metrics)


@pytest.fixture()
def stack():
    return make_stack()


def run(coro):
    return asyncio.run(coro)


def pixels(b64: str) -> np.ndarray:
    """A base64 image file as uint8 [H, W, C] (decoded by Pillow, not by our encoder)."""
    img = np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))
    return img[..., None] if img.ndim == 2 else img


def post(client, body: dict, **kw):
    return run(client.post(ROUTE, json=body, **kw))


def test_images_are_flowmap_samples_of_the_named_class(stack):
    before = int(time.time())
    r = post(stack.client, {"prompt": " C7 ", "n": 3, "seed": 11, "steps": 2, "guidance_scale": 1.5})
    assert r.status_code == 200, r.text
    body = r.json()
    want = to_uint8_nhwc(reference(3, 2, 11, [7] * 3, 1.5))
    got = np.stack([pixels(d["b64_json"]) for d in body["data"]])
    np.testing.assert_array_equal(got, want)
    assert [(d["seed"], d["index"], d["revised_prompt"]) for d in body["data"]] == [
        (11, i, "c7") for i in range(3)
    ]
    assert before <= body["created"] <= time.time() + 1
    assert (body["model"], body["size"], body["output_format"], body["steps"]) == ("toy", "2x2", "png", 2)
    assert (body["class_label"], body["guidance_scale"], body["seed"]) == (7, 1.5, 11)
    assert body["timings"]["total_ms"] >= body["timings"]["compute_ms"] >= 0


def test_image_i_is_v1s_sample_i_of_the_seed_and_the_index_names_the_class(stack):
    async def go():
        img = await stack.client.post(ROUTE, json={"prompt": "4", "n": 4, "seed": 3, "size": "2x2"})
        v1 = await stack.client.post("/v1/generate", json={"num_samples": 4, "seed": 3, "class_label": 4})
        return img.json(), v1.json()

    img, v1 = run(go())
    assert [d["b64_json"] for d in img["data"]] == v1["images"]
    assert img["data"][0]["revised_prompt"] == "c4"


def test_images_requests_stay_batch_invariant_among_others(stack):
    async def go():
        stack.core.server.core.scheduler.max_queue = 16
        stack.core.paused = True
        bodies = [{"prompt": str(i), "n": 2, "seed": i, "steps": 1 + i % 4} for i in range(5)]
        tasks = [asyncio.ensure_future(stack.client.post(ROUTE, json=b)) for b in bodies]
        tasks.append(asyncio.ensure_future(stack.client.post("/v1/generate", json={"num_samples": 3})))
        await asyncio.sleep(0.05)
        stack.core.paused = False
        stack.core.pump()
        return bodies, await asyncio.gather(*tasks)

    bodies, rs = run(go())
    for b, r in zip(bodies, rs, strict=False):
        want = to_uint8_nhwc(reference(2, b["steps"], b["seed"], [b["seed"]] * 2))
        np.testing.assert_array_equal(np.stack([pixels(d["b64_json"]) for d in r.json()["data"]]), want)


BAD = [  # body, the field the 400 names, a word its message has
    ({"prompt": "a cat"}, "prompt", "c9"),
    ({"prompt": "٧"}, "prompt", "0..9"),  # a digit, but not an ASCII index
    ({"prompt": "07"}, "prompt", "0..9"),
    ({"prompt": "10"}, "prompt", "0..9"),
    ({"prompt": ""}, "prompt", "at least 1"),
    ({"prompt": "x" * 4001}, "prompt", "at most 4000"),
    ({}, "prompt", "required"),
    ({"prompt": 7}, "prompt", "string"),
    ({"prompt": "1", "n": 0}, "n", "greater than"),
    ({"prompt": "1", "n": 17}, "n", "less than"),
    ({"prompt": "1", "n": "2"}, "n", "integer"),
    ({"prompt": "1", "size": "1024x1024"}, "size", "2x2"),
    ({"prompt": "1", "size": 2}, "size", "string"),
    ({"prompt": "1", "response_format": "url"}, "response_format", "b64_json"),
    ({"prompt": "1", "response_format": "bmp"}, "response_format", "b64_json"),
    ({"prompt": "1", "output_format": "gif"}, "output_format", "png"),
    ({"prompt": "1", "steps": 5}, "steps", "less than"),
    ({"prompt": "1", "steps": "fast"}, "steps", "auto"),
    ({"prompt": "1", "seed": -1}, "seed", "greater than"),
    ({"prompt": "1", "guidance_scale": 21}, "guidance_scale", "less than"),
    ({"prompt": "1", "sampler": "ddim"}, "sampler", "flowmap"),
    ({"prompt": "1", "sampler": "consistency", "steps": 2}, "sampler", "serves flowmap"),
    ({"prompt": "1", "deadline_ms": 0}, "deadline_ms", "greater than"),
    ({"prompt": "1", "quality": "x" * 65}, "quality", "at most 64"),
    ({"prompt": "1", "output_compression": 80}, "output_compression", "webp and jpeg"),
    ({"prompt": "1", "output_format": "webp", "output_compression": 0}, "output_compression", "greater than"),
    ({"prompt": "1", "output_format": "jpeg", "output_compression": 101}, "output_compression", "less than"),
    ({"prompt": "1", "output_format": "jpeg", "output_compression": 9.5}, "output_compression", "integer"),
    ({"prompt": "1", "steer": {"reward": "ink"}}, "steer", "Extra inputs"),
    ({"prompt": "1", "model": ""}, "model", "at least 1"),
]


@pytest.mark.parametrize(("body", "param", "word"), BAD)
def test_bad_input_is_a_400_in_openais_shape_naming_the_field(stack, body, param, word):
    r = post(stack.client, body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error", err
    assert word in err["message"] and err["message"], err


@pytest.mark.parametrize(("fmt", "pil"), [("png", "PNG"), ("webp", "WEBP"), ("jpeg", "JPEG")])
def test_output_formats_on_both_routes(stack, fmt, pil):
    async def go():
        img = await stack.client.post(ROUTE, json={"prompt": "3", "n": 2, "output_format": fmt})
        v1 = await stack.client.post("/v1/generate", json={"num_samples": 2, "output": fmt})
        return img.json(), v1.json()

    img, v1 = run(go())
    assert img["output_format"] == fmt and v1["output"] == fmt
    for b64 in [d["b64_json"] for d in img["data"]] + v1["images"]:
        im = Image.open(io.BytesIO(base64.b64decode(b64)))
        assert im.format == pil and im.size == (2, 2)


def test_v1_quality_is_checked_as_the_images_route_checks_it(stack):
    async def go():
        bodies = [
            {"output": "png", "quality": 80},
            {"output": "jpeg", "quality": 0},
            {"output": "webp", "quality": 50},
        ]
        return [await stack.client.post("/v1/generate", json=b) for b in bodies]

    png, zero, ok = run(go())
    assert png.status_code == 422 and png.json()["detail"][0]["loc"] == ["body", "quality"]
    assert "webp and jpeg" in png.json()["detail"][0]["msg"]
    assert zero.status_code == 422 and zero.json()["detail"][0]["loc"] == ["body", "quality"]
    assert ok.status_code == 200 and ok.json()["output"] == "webp"


def test_openai_fields_it_does_not_use_are_accepted(stack):
    body = {"prompt": "2", "quality": "standard", "style": "vivid", "user": "u1", "size": "auto"}
    body |= {"response_format": "b64_json", "output_format": "png", "model": "toy", "steps": "auto"}
    r = post(stack.client, body)
    assert r.status_code == 200 and r.json()["class_label"] == 2, r.text


def test_statuses_other_than_400_have_openais_shape(stack):
    async def go():
        unknown = await stack.client.post(ROUTE, json={"prompt": "1", "model": "dall-e-3"})
        large = await stack.client.post(ROUTE, json={"prompt": "1", "user": "u" * 5000})
        method = await stack.client.get(ROUTE)
        broken = await stack.client.post(
            ROUTE, content=b'{"prompt": ', headers={"content-type": "application/json"}
        )
        stack.core.server.core.scheduler.max_batch = 1  # one running, max_queue (2) waiting
        stack.core.paused = True
        held = [
            asyncio.ensure_future(stack.client.post(ROUTE, json={"prompt": "1", "deadline_ms": 100}))
            for _ in range(3)
        ]
        await asyncio.sleep(0.02)
        full = await stack.client.post(ROUTE, json={"prompt": "1"})
        return unknown, large, method, broken, full, await asyncio.gather(*held)

    unknown, large, method, broken, full, late = run(go())
    cases = [
        (unknown, 404, "model"),
        (large, 413, None),
        (method, 405, None),
        (broken, 400, None),
        (full, 429, None),
    ]
    for r, status, param in cases + [(r, 504, None) for r in late]:
        assert r.status_code == status, r.text
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["param"] == param and err["message"]
    assert "dall-e-3" in unknown.json()["error"]["message"] and int(full.headers["retry-after"]) >= 1
    assert (
        full.json()["error"]["type"] == "rate_limit_error" and late[0].json()["error"]["code"] == "deadline"
    )


def test_draining_is_a_503_in_openais_shape(stack):
    stack.service.begin_drain()
    r = post(stack.client, {"prompt": "1"})
    assert r.status_code == 503 and r.json()["error"]["type"] == "server_error"
    assert r.json()["error"]["message"] == "server is draining" and r.json()["error"]["code"] == "draining"


def test_bearer_key_as_the_sdk_sends_it():
    s = make_stack(api_key="k3y")

    async def go():
        none = await s.client.post(ROUTE, json={"prompt": "1"})
        wrong = await s.client.post(ROUTE, json={"prompt": "1"}, headers={"Authorization": "Bearer nope"})
        ok = await s.client.post(ROUTE, json={"prompt": "1"}, headers={"Authorization": "Bearer k3y"})
        return none, wrong, ok

    none, wrong, ok = run(go())
    for r in (none, wrong):
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert r.json()["error"]["type"] == "authentication_error"
    assert ok.status_code == 200


def test_the_route_is_recorded_with_the_status_sent(stack):
    async def go():
        await stack.client.post(ROUTE, json={"prompt": "1", "steps": 3})
        await stack.client.post(ROUTE, json={"prompt": "nothing", "steps": 2})
        await stack.client.post(ROUTE, json={"prompt": "1", "model": "sneaky"})
        return (await stack.client.get("/metrics")).text

    text = run(go())
    assert 'flowmap_request_duration_seconds_count{model="toy",status="200",steps="3"} 1.0' in text
    assert 'flowmap_request_duration_seconds_count{model="toy",status="400",steps="2"} 1.0' in text
    assert re.search(r'flowmap_rejections_total\{model="",reason="not_found"\} 1\.0', text)
    assert "sneaky" not in text and 'status="422"' not in text


def test_models_list_class_names_and_the_openapi_documents_the_route(stack):
    async def go():
        return (await stack.client.get("/v1/models")).json(), (await stack.client.get("/openapi.json")).json()

    models, spec = run(go())
    assert models["models"][0]["class_names"] == NAMES
    op = spec["paths"][ROUTE]["post"]
    assert {"400", "401", "404", "413", "429", "503", "504"} <= set(op["responses"])
    assert "422" not in op["responses"]  # never sent: invalid input is OpenAI's 400
    body = spec["components"]["schemas"]["ImagesRequest"]["properties"]
    assert body["n"]["maximum"] == 16 and body["steps"]["anyOf"][0]["maximum"] == 4


def test_an_unconditional_model_ignores_the_prompt():
    _, _, client = serve("digits_uncond")

    async def go():
        a = await client.post(ROUTE, json={"prompt": "a cat in a hat", "n": 2, "seed": 4, "size": "8x8"})
        b = await client.post(ROUTE, json={"prompt": "7", "n": 2, "seed": 4})
        v1 = await client.post("/v1/generate", json={"num_samples": 2, "seed": 4})
        guided = await client.post(ROUTE, json={"prompt": "7", "guidance_scale": 2})
        return a.json(), b.json(), v1.json(), guided

    a, b, v1, guided = run(go())
    assert [d["b64_json"] for d in a["data"]] == [d["b64_json"] for d in b["data"]] == v1["images"]
    assert a["class_label"] is None and a["data"][0]["revised_prompt"] is None
    assert guided.status_code == 400 and guided.json()["error"]["param"] == "guidance_scale"


def test_class_names_of_a_checkpoint():
    assert class_names({"name": "mnist", "num_classes": 10}) == list(DIGIT_NAMES)
    assert class_names({"name": "digits", "num_classes": 10, "class_names": NAMES}) == NAMES
    assert class_names({"name": "cifar", "num_classes": 10}) == []
    assert class_names({"name": "digits", "num_classes": 3}) == []  # not the digit data
    assert class_names({"name": "x", "num_classes": 2, "class_names": ["a", 1]}) == []


def test_a_lone_surrogate_prompt_is_a_400_in_strict_json(stack):
    raw = b'{"prompt": "\\ud800 seven", "size": "\\udfff"}'
    r = run(stack.client.post(ROUTE, content=raw, headers={"content-type": "application/json"}))
    assert r.status_code == 400 and r.json()["error"]["param"] in ("prompt", "size"), r.text
