"""`flowmap eval`: quality against held-out data (gmm8: the exact flow; digits, mnist: flowmap.quality).

Rows are (sampler, steps) pairs: the model's own sampler ("auto": the flow map, or the re-noising
multistep sampler for consistency models) at `steps`, plus the teacher ODE (Heun on the model's
diagonal) at `ode_steps`. Several models can be compared; `plots.py` draws quality against steps.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm import tqdm

from flowmap.checkpoint import Model
from flowmap.data import Dataset, gmm8_sample, load_data
from flowmap.generate import generate
from flowmap.losses import CONSISTENCY_METHODS
from flowmap.metrics import energy_distance, gmm8_relative_mse
from flowmap.samplers import make_noise, sample_keys


def resolve_sampler(model: Model, sampler: str = "auto") -> str:
    """Sampler "auto": the re-noising multistep sampler for consistency models (ct, cd), Euler for the fm
    teacher (it learns only the diagonal u(x, t, t): its off-diagonal jumps are untrained, FD 187-271 at one
    mnist step), else the flow map."""
    if sampler != "auto":
        return sampler
    method = model.config.get("method")
    return "stochastic" if method in CONSISTENCY_METHODS else "euler" if method == "fm" else "flowmap"


def runs(model: Model, steps: list[int], sampler: str, ode_steps: list[int]) -> list[tuple[str, int]]:
    """The (sampler, steps) rows to measure: the model's sampler, then the teacher ODE sweep."""
    return [(resolve_sampler(model, sampler), k) for k in steps] + [("heun", k) for k in ode_steps]


def eval_gmm8(
    model: Model,
    steps: list[int],
    n: int = 4096,
    seed: int = 0,
    sampler: str = "auto",
    ode_steps: list[int] = (),
    progress: bool = False,
) -> list[dict]:
    """Relative MSE against the exact flow and energy distance to fresh data, per (sampler, steps)."""
    ref = gmm8_sample(n, torch.Generator().manual_seed(seed + 7))
    rows = []
    todo = runs(model, steps, sampler, list(ode_steps))
    for name, k in (b := _bar(todo, model, progress, len(todo), "run")):
        b.set_postfix_str(_run_label(name, k))
        run = lambda z: generate(model, k, z.float(), sampler=name, seed=seed)  # noqa: B023
        noise = make_noise(n, [2], seed)
        rows.append(
            {
                "sampler": name,
                "steps": k,
                "rel_mse": gmm8_relative_mse(run, n=n, seed=seed),
                "energy": energy_distance(run(noise), ref),
            }
        )
    return rows


def balanced_labels(num_classes: int, per_class: int) -> torch.Tensor:
    return torch.arange(num_classes).repeat_interleave(per_class)


def eval_images(
    model: Model,
    data: Dataset,
    steps: list[int],
    per_class: int = 100,
    seed: int = 0,
    guidance: float = 1.0,
    sampler: str = "auto",
    ode_steps: list[int] = (),
    progress: bool = False,
) -> dict:
    """Per (sampler, steps): flowmap.quality.score_images of class-balanced samples (the sweep scores
    server samples with the same function), with the train split's own FDs as floors. `progress`: a bar
    on stderr over the runs' classes sampled (a 64-step ODE run at 28x28 takes minutes on a CPU; each
    run's scoring, seconds, follows its last class)."""
    from flowmap.quality import reference_floors, score_images

    floors = reference_floors(data.name)
    c = max(model.num_classes, 1)
    y = balanced_labels(c, per_class) if model.num_classes else None
    rows, todo = [], runs(model, steps, sampler, list(ode_steps))
    with _bar(None, model, progress, len(todo) * c, "class" if model.num_classes else "run") as b:
        for name, k in todo:
            b.set_postfix_str(_run_label(name, k))
            x = _sample_labelled(model, k, c * per_class, y, seed, guidance, name, b.update)
            rows.append({"sampler": name, "steps": k} | score_images(x, y, data=data.name, seed=seed))
    return {
        "fd_floor_train_vs_test": floors["fd"],
        "fd_pixel_floor_train_vs_test": floors["fd_pixel"],
        "rows": rows,
    }


@torch.inference_mode()
def _sample_labelled(
    model: Model, steps: int, n: int, y, seed: int, guidance: float, sampler: str = "flowmap", done=None
) -> torch.Tensor:
    """n samples (of class y[i] each, if y), drawn a class at a time; `done(1)` after each class (once, if
    unconditional)."""
    noise, keys = make_noise(n, model.shape, seed), sample_keys(seed, n)
    done = done or (lambda _: None)
    if y is None:
        x = generate(model, steps, noise, sampler=sampler, seed=seed)
        done(1)
        return x
    kw = dict(guidance=guidance, sampler=sampler, seed=seed)
    parts = []
    for c in y.unique().tolist():
        parts.append(generate(model, steps, noise[y == c], class_label=c, keys=keys[y == c], **kw))
        done(1)
    return torch.cat(parts)


def _run_label(sampler: str, steps: int) -> str:
    return f"{sampler}, {steps} step{'s' * (steps > 1)}"


def _bar(items, model: Model, progress: bool, total: int, unit: str) -> tqdm:
    """`flowmap eval`'s progress bar (stderr; off unless `progress`)."""
    return tqdm(
        items, total=total, disable=not progress, desc=f"eval {model.name}", unit=unit, dynamic_ncols=True
    )


def evaluate(
    model: Model,
    steps: list[int],
    n: int = 4096,
    per_class: int = 100,
    seed: int = 0,
    guidance: float = 1.0,
    sampler: str = "auto",
    ode_steps: list[int] = (),
    progress: bool = False,
) -> dict:
    name = model.config["data"]["name"]
    head = {"model": model.name, "data": name, "method": model.config.get("method"), "path": str(model.path)}
    if name == "gmm8":
        return head | {"rows": eval_gmm8(model, steps, n, seed, sampler, ode_steps, progress)}
    if name not in ("digits", "mnist"):
        raise ValueError(
            f"flowmap eval scores gmm8, digits and mnist only (their held-out splits; a classifier and PCA"
            f" fitted on the train split); model {model.name!r} was trained on data {name!r}"
        )
    data = load_data(name)
    if list(data.shape) != model.shape:
        raise ValueError(f"model {model.name!r} has shape {model.shape}, data {name!r} has {data.shape}")
    result = head | eval_images(model, data, steps, per_class, seed, guidance, sampler, ode_steps, progress)
    ratios = vs_ode(result["rows"]) if ode_steps else None
    return result | {"vs_ode": ratios} if ratios else result


def vs_ode(rows: list[dict], metrics: tuple[str, ...] = ("fd", "fd_pixel")) -> dict | None:
    """Each few-step row's FDs over those of the model's own ODE, the Heun row with the most steps, from the
    same noise (issue 21's goals: FD at 1 / 2 / 4 steps <= 1.3x / 1.1x / 1.0x the 64-step ODE's): {"ode":
    "heun K", "rows": [{"sampler", "steps", "fd": ratio, "fd_pixel": ratio}]}; None without a few-step row."""
    ode = max((r for r in rows if r["sampler"] == "heun"), key=lambda r: r["steps"])
    ratio = lambda r, k: r[k] / ode[k] if ode.get(k) and r.get(k) is not None else None
    few = [r for r in rows if r is not ode and r["sampler"] != "heun"]
    if not few:
        return None
    return {
        "ode": f"heun {ode['steps']}",
        "rows": [
            {"sampler": r["sampler"], "steps": r["steps"]} | {k: ratio(r, k) for k in metrics} for r in few
        ],
    }


@torch.inference_mode()
def sample_grid(
    model: Model, steps: int, sampler: str = "auto", per_class: int = 8, seed: int = 0, guidance: float = 1.0
) -> torch.Tensor:
    """Samples for a PNG: one row of per_class per class if conditional, else 64 images or 4096 points."""
    c = model.num_classes
    n = c * per_class if c else (64 if len(model.shape) == 3 else 4096)
    y = balanced_labels(c, per_class) if c else None
    return _sample_labelled(model, steps, n, y, seed, guidance, resolve_sampler(model, sampler))


def format_table(result: dict) -> str:
    """The rows as a fixed-width table, each column as wide as its name (at least 8), floors on top."""
    rows = result["rows"]
    cols = list(rows[0])
    width = {c: max(len(c), 8) for c in cols}
    lines = [f"model {result['model']} on {result['data']}"]
    for key, label in (("fd_floor_train_vs_test", "FD"), ("fd_pixel_floor_train_vs_test", "pixel FD")):
        if key in result:
            lines.append(f"{label} floor (train vs test): {result[key]:.3f}")
    lines.append("  ".join(f"{c:>{width[c]}}" for c in cols))
    for r in rows:
        cells = (_cell(r.get(c), width[c]) for c in cols)
        lines.append("  ".join(cells))
    if result.get("vs_ode"):
        lines.append(_vs_ode_line(result["vs_ode"]))
    return "\n".join(lines)


def _vs_ode_line(v: dict) -> str:
    """ "against its own ODE (heun 64, same noise), at 1 / 2 / 4 steps: FD 1.130x / ...; pixel FD ..."."""
    at = " / ".join(str(r["steps"]) for r in v["rows"])
    parts = [
        f"{label} " + " / ".join(f"{r[k]:.3f}x" for r in v["rows"])
        for k, label in (("fd", "FD"), ("fd_pixel", "pixel FD"))
        if all(r.get(k) is not None for r in v["rows"])
    ]
    return f"against its own ODE ({v['ode']}, same noise), at {at} steps: {'; '.join(parts)}"


def _cell(value, width: int) -> str:
    return f"{value:>{width}.4f}" if isinstance(value, float) else f"{value!s:>{width}}"


def parse_steps(text: str, flag: str) -> list[int]:
    """ "1,2,4" -> [1, 2, 4]; "" -> []; a clear error for anything else."""
    try:
        steps = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"{flag} must be comma-separated integers, got {text!r}") from None
    if steps and min(steps) < 1:
        raise ValueError(f"{flag} must be >= 1, got {text!r}")
    return steps


def evaluate_many(
    models: list[str],
    steps: list[int],
    ode_steps: list[int] = (),
    plot: str | None = None,
    grids: str | None = None,
    precision: str = "fp32",
    **kwargs,
) -> list[dict]:
    """Evaluate several checkpoints alike; optionally a quality-vs-steps PNG and sample grids per model.
    precision: the networks' compute precision while sampling (flowmap.model.with_precision); the
    scoring (classifier, PCA) stays float32."""
    from flowmap.checkpoint import load_model
    from flowmap.model import with_precision

    loaded = [with_precision(load_model(m), precision) for m in models]
    if not steps and not ode_steps:
        raise ValueError("nothing to evaluate: give --steps and/or --ode-steps")
    results = [evaluate(m, steps, ode_steps=ode_steps, **kwargs) for m in loaded]
    if plot:
        from flowmap.plots import plot_quality

        floor = results[0].get("fd_floor_train_vs_test")
        plot_quality(results, plot, floor=floor)
        if results[0]["data"] == "gmm8":  # energy distance: fair to re-noising samplers too
            plot_quality(results, Path(plot).with_name(Path(plot).stem + "_energy.png"), metric="energy")
        else:  # the second feature space, which blur cannot fool
            pixel_floor = results[0].get("fd_pixel_floor_train_vs_test")
            pixel_png = Path(plot).with_name(Path(plot).stem + "_pixel.png")
            plot_quality(results, pixel_png, metric="fd_pixel", floor=pixel_floor)
    if grids:
        save_grids(loaded, steps, grids, kwargs.get("sampler", "auto"), kwargs.get("seed", 0))
    return results


def save_grids(
    models: list[Model], steps: list[int], folder: str, sampler: str = "auto", seed: int = 0
) -> None:
    """One PNG per model and step count: MODEL_Kstep.png (image grids, or a density render for 2-D)."""
    from flowmap.images import save_png

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    for model in models:
        image = len(model.shape) == 3
        for k in steps:
            x = sample_grid(model, k, sampler, seed=seed)
            save_png(out / f"{model.name}_{k}step.png", x, image, nrow=8 if model.num_classes else None)
