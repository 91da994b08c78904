"""The real `openai` package as the client of POST /v1/images/generations on a real server process:
only `base_url` and `api_key` change. Sync and async clients, n > 1, the extensions through
`extra_body`, errors raised as the SDK's own classes with our messages, and `stream=True` with
`partial_images` read as the SDK's own image stream events."""

from __future__ import annotations

import asyncio
import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image

from flowmap.classifier import classifier_path, load_classifier
from flowmap.data import to_uint8
from tests.integration.conftest import KEY, ServerProcess
from tests.integration.test_routes import cli_samples

openai = pytest.importorskip("openai")


def sdk(server, cls=None, key: str = KEY):
    """An OpenAI client of the test server (no retries: a refused request must fail at once)."""
    return (cls or openai.OpenAI)(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=30)


def pixels(item) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(item.b64_json))))


def assert_close(imgs: list[np.ndarray], ref: np.ndarray) -> None:
    diff = np.abs(np.stack(imgs).astype(int) - ref.astype(int))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99  # a rounding tie may flip in the last float bit


def test_sync_client_gets_flowmap_samples_of_the_named_class(server, checkpoints):
    with sdk(server) as client:
        r = client.images.generate(
            model="digits", prompt="Seven", n=3, size="8x8", extra_body={"seed": 5, "steps": 2}
        )
    assert len(r.data) == 3 and isinstance(r.created, int)
    imgs = [pixels(d) for d in r.data]
    assert all(i.shape == (8, 8) and i.dtype == np.uint8 for i in imgs)
    assert_close(imgs, to_uint8(cli_samples(checkpoints["digits"], 2, 3, 5, 7))[:, 0])
    extra = r.model_extra
    assert extra["seed"] == 5 and extra["steps"] == 2 and extra["class_label"] == 7 and extra["timings"]
    assert [(d.revised_prompt, d.model_extra["seed"], d.model_extra["index"]) for d in r.data] == [
        ("seven", 5, i) for i in range(3)
    ]


def test_async_client_concurrent_requests(server, checkpoints):
    async def go():
        async with sdk(server, openai.AsyncOpenAI) as client:
            calls = [
                client.images.generate(model="digits", prompt=str(c), n=2, extra_body={"seed": c, "steps": 1})
                for c in range(4)
            ]
            return await asyncio.gather(*calls)

    for c, r in enumerate(asyncio.run(go())):
        assert len(r.data) == 2 and r.model_extra["class_label"] == c
        assert_close(
            [pixels(d) for d in r.data], to_uint8(cli_samples(checkpoints["digits"], 1, 2, c, c))[:, 0]
        )


def test_errors_are_the_sdks_classes_with_our_messages(server):
    with sdk(server) as client:
        with pytest.raises(openai.BadRequestError) as bad:
            client.images.generate(model="digits", prompt="a cat wearing a hat")
        with pytest.raises(openai.BadRequestError) as url:
            client.images.generate(model="digits", prompt="1", response_format="url")
        with pytest.raises(openai.BadRequestError) as steps:
            client.images.generate(model="digits", prompt="1", extra_body={"steps": 99})
        with pytest.raises(openai.NotFoundError) as unknown:
            client.images.generate(model="dall-e-3", prompt="1")
    assert bad.value.status_code == 400 and bad.value.param == "prompt"
    assert "names no class of model 'digits'" in bad.value.message and "seven" in bad.value.message
    assert url.value.param == "response_format" and "b64_json" in url.value.message
    assert steps.value.param == "steps" and "less than or equal to 4" in steps.value.message
    assert unknown.value.code == "not_found" and "dall-e-3" in unknown.value.message
    with sdk(server, key="wrong") as client, pytest.raises(openai.AuthenticationError) as auth:
        client.images.generate(model="digits", prompt="1")
    assert "API key" in auth.value.message


def test_a_model_that_makes_no_images_is_refused_naming_model(server):
    with sdk(server) as client, pytest.raises(openai.BadRequestError) as e:
        client.images.generate(model="gmm8", prompt="anything")
    assert e.value.param == "model" and "not an image model" in e.value.message


PARTIAL, COMPLETED = "image_generation.partial_image", "image_generation.completed"


def test_sync_client_streams_partial_images_then_the_plain_images(server, checkpoints):
    extra = {"seed": 4, "steps": 4}
    with sdk(server) as client:
        events = list(
            client.images.generate(
                model="digits", prompt="seven", n=2, stream=True, partial_images=2, extra_body=extra
            )
        )
        plain = client.images.generate(model="digits", prompt="seven", n=2, extra_body=extra)
    assert [e.type for e in events] == [PARTIAL] * 4 + [COMPLETED] * 2
    assert all(isinstance(e, openai.types.ImageGenPartialImageEvent) for e in events[:4])
    assert [(e.partial_image_index, e.model_extra["step"], e.model_extra["index"]) for e in events[:4]] == [
        (0, 2, 0),
        (0, 2, 1),
        (1, 3, 0),
        (1, 3, 1),
    ]  # partial_images=2 of 4 steps: after steps 2 and 3 (the 4th is the final image)
    done = events[4:]
    assert all(isinstance(e, openai.types.ImageGenCompletedEvent) for e in done)
    assert [e.b64_json for e in done] == [d.b64_json for d in plain.data]  # same seed: the same images
    assert_close([pixels(e) for e in done], to_uint8(cli_samples(checkpoints["digits"], 4, 2, 4, 7))[:, 0])
    assert [(e.model_extra["index"], e.model_extra["seed"]) for e in done] == [(0, 4), (1, 4)]
    assert all(e.size == "8x8" and e.output_format == "png" and e.model_extra["timings"] for e in done)
    assert pixels(events[0]).shape == (8, 8)


async def drain(stream) -> list:
    return [e async for e in stream]


def test_async_client_streams_and_errors_name_partial_images(server):
    async def go():
        async with sdk(server, openai.AsyncOpenAI) as client:
            calls = [
                client.images.generate(
                    model="digits", prompt=str(c), stream=True, extra_body={"seed": c, "steps": 2}
                )
                for c in range(3)
            ]
            streams = await asyncio.gather(*calls)
            got = await asyncio.gather(*(drain(s) for s in streams))
            plain = await client.images.generate(
                model="digits", prompt="2", extra_body={"seed": 2, "steps": 2}
            )
            with pytest.raises(openai.BadRequestError) as bad:
                await client.images.generate(model="digits", prompt="1", stream=True, partial_images=4)
            with pytest.raises(openai.BadRequestError) as alone:
                await client.images.generate(model="digits", prompt="1", partial_images=1)
            return got, plain, bad.value, alone.value

    got, plain, bad, alone = asyncio.run(go())
    assert [[e.type for e in events] for events in got] == [[COMPLETED]] * 3  # partial_images: 0 by default
    assert [events[0].model_extra["class_label"] for events in got] == [0, 1, 2]
    assert got[2][0].b64_json == plain.data[0].b64_json
    assert (
        bad.status_code == 400 and bad.param == "partial_images" and "less than or equal to 3" in bad.message
    )
    assert alone.status_code == 400 and alone.param == "partial_images" and "stream" in alone.message


@pytest.mark.parametrize(("fmt", "pil"), [("webp", "WEBP"), ("jpeg", "JPEG")])
def test_output_format_and_compression_as_the_sdk_sends_them(server, fmt, pil):
    with sdk(server) as client:
        r = client.images.generate(model="digits", prompt="3", n=2, output_format=fmt, output_compression=80)
    assert r.output_format == fmt and len(r.data) == 2
    for d in r.data:
        im = Image.open(io.BytesIO(base64.b64decode(d.b64_json)))
        assert im.format == pil and im.size == (8, 8)


@pytest.fixture(scope="module")
def shipped():
    """The shipped image models (mnist, digits, digits_uncond) behind a server with no key: the SDK needs
    one anyway, and any goes."""
    models = ["--model", "mnist", "--model", "digits", "--model", "digits_uncond"]
    s = ServerProcess([*models, "--engine", "eager"]).wait_ready()
    yield s
    assert s.stop() == 0


def classes(data, of: str = "digits") -> list[int]:
    """The shipped classifier's reading of base64 PNGs (model space: the PNG rule inverted)."""
    x = torch.tensor(np.stack([pixels(d) for d in data]), dtype=torch.float32)[:, None] / 127.5 - 1
    return load_classifier(classifier_path(of))(x).argmax(1).tolist()


def test_every_shipped_image_model_through_the_sdk(shipped):
    with sdk(shipped, key="anything") as client:
        models = client.models.with_raw_response.list().http_response.json()["models"]
        assert {m["name"] for m in models if m["image"]} == {"mnist", "digits", "digits_uncond"}
        fours = client.images.generate(
            model="mnist", prompt="four", n=16, size="28x28", extra_body={"seed": 3}
        )
        sevens = client.images.generate(model="digits", prompt="seven", n=16, extra_body={"seed": 1})
        threes = client.images.generate(model="digits", prompt="3", n=16, size="8x8", extra_body={"seed": 2})
        free = client.images.generate(model="digits_uncond", prompt="a handwritten digit", n=4)
    assert sum(c == 7 for c in classes(sevens.data)) >= 14 and sum(c == 3 for c in classes(threes.data)) >= 14
    assert len(free.data) == 4 and free.model_extra["class_label"] is None
    assert all(pixels(d).shape == (8, 8) for d in free.data)
    assert (
        all(pixels(d).shape == (28, 28) for d in fours.data)
        and sum(c == 4 for c in classes(fours.data, "mnist")) >= 11  # 1-step class accuracy 78% (README)
    )
