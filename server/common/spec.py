"""The description of a served model, built once by its engine core (server.core_process.build), carried
in the Ready message and the supervisor's CoreStates, and read as is by the API processes."""

from __future__ import annotations

from dataclasses import dataclass, field

IMAGE_CHANNELS = (1, 3, 4)  # PNG colour types: grey, RGB, RGBA
SAMPLERS = ("flowmap", "consistency")  # every sampler a model may serve (ModelSpec.samplers)


def is_image(shape: list[int]) -> bool:
    """PNG output is possible for [C, H, W] models with C in 1, 3, 4."""
    return len(shape) == 3 and shape[0] in IMAGE_CHANNELS


def rows_per_sample(guidance: float) -> int:
    """Network rows one sample takes per step: a classifier-free-guided sample (w != 1) counts twice
    (its conditional and its null-label row)."""
    return 1 if guidance == 1.0 else 2


@dataclass(frozen=True)
class ModelSpec:
    """A served model (GET /v1/models shows it; the v2 metadata and the request checks read it)."""

    name: str
    shape: list[int]  # one sample in model space
    num_classes: int  # 0: unconditional
    image: bool  # is_image(shape): PNG output possible
    engine: str
    device: str
    precision: str = "fp32"  # the network's compute precision (--precision)
    baked_guidance_scale: float = 1.0  # guidance trained into the network (1: none)
    method: str | None = None  # the training method of the checkpoint
    samplers: list[str] = field(default_factory=lambda: ["flowmap"])  # "consistency" too: linear only
    default_sampler: str = "flowmap"  # "consistency" for consistency models (ct, cd)
    class_names: list[str] = field(default_factory=list)  # one per class, or none (known by index only)

    @property
    def conditional(self) -> bool:
        return self.num_classes > 0

    @classmethod
    def of(cls, value: ModelSpec | dict | None) -> ModelSpec | None:
        """From its wire form (a dict of the fields); TypeError for anything else."""
        if value is None or isinstance(value, ModelSpec):
            return value
        if not isinstance(value, dict):
            raise TypeError(f"a model spec is a dict, not {type(value).__name__}")
        return cls(**value)
