"""Periodic evaluation of a run's EMA model: one row per (metric, sampler, nfe).

Rows: {step, metric, sampler ("u": few-step with u, "v": Euler with v = u(z, t, t)), nfe, value,
floor, ceiling}. The noise is the same at every evaluation of a run, so curves move only with the model.
For toy data the floor is the distance between two fresh data samples of the same size and the ceiling
the distance between prior noise and data. Digits: `fd_digits` (floor: train images against the test
split; ceiling: the evaluation noise) and `class_acc`, the share of samples of class c that the digits
classifier labels c (higher is better; its "floor" is the real train images' accuracy, its "ceiling" that
of noise, so floor and ceiling always mean "data" and "noise").

Image runs also get a PNG grid of samples per evaluation (`grid_png`), so the numbers can be checked by eye.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import RunConfig
from ..data.toy2d import ToyDataset
from ..meanflow.sampling import generate
from ..rng import stream
from .toy import TOY_METRICS, sliced_w2_from_projections, sorted_projections

DIGITS_METRICS = ("fd_digits", "class_acc")


class Evaluator:
    def __init__(self, cfg: RunConfig, dataset, device: torch.device):
        self.cfg, self.dataset, self.device = cfg, dataset, device
        self.ecfg = cfg.eval
        n = self.ecfg.num_samples
        g = stream(cfg.train.seed, "evaluation")
        self.noise = torch.randn(n, *dataset.shape, generator=g)
        self.labels = (torch.randint(0, dataset.num_classes, (n,), generator=g)
                       if getattr(dataset, "num_classes", 0) > 0 else None)
        self._bounds: dict[str, tuple[float, float]] = {}
        self._reference_projections: torch.Tensor | None = None
        for name in self.ecfg.metrics:
            if name in TOY_METRICS and not isinstance(dataset, ToyDataset):
                raise ValueError(f"eval.metrics: {name} needs toy data, not data.name={cfg.data.name}")
            if name in DIGITS_METRICS and cfg.data.name != "digits":
                raise ValueError(f"eval.metrics: {name} needs data.name=digits, not {cfg.data.name}")

    def bounds(self, metric: str) -> tuple[float, float]:
        """(floor, ceiling) of a metric for this run's data and sample size, computed once."""
        if metric not in self._bounds:
            n = self.ecfg.num_samples
            seed = self.cfg.train.seed
            if metric in TOY_METRICS:
                fn = TOY_METRICS[metric]
                ref = self.dataset.reference(n, seed)
                other = self.dataset.reference(n, seed + 7919)
                self._bounds[metric] = (fn(other, ref), fn(self.noise, ref))
            elif metric == "fd_digits":
                from .fid import digits_fd

                real = self.dataset.real_images(split="train")[:n]
                self._bounds[metric] = (digits_fd(real), digits_fd(self.noise.clamp(-1, 1)))
            elif metric == "class_acc":
                from ..data.digits import Digits
                from .fid import digits_class_accuracy

                real = Digits("train")
                self._bounds[metric] = (digits_class_accuracy(real.x[:n], real.y[:n]),
                                        digits_class_accuracy(self.noise.clamp(-1, 1), self.labels))
            else:
                self._bounds[metric] = (float("nan"), float("nan"))
        return self._bounds[metric]

    def distance(self, metric: str, samples: torch.Tensor) -> float:
        if metric == "sw2":  # the reference's sorted projections once per run: half of an evaluation's sorting
            if self._reference_projections is None:
                ref = self.dataset.reference(self.ecfg.num_samples, self.cfg.train.seed)
                self._reference_projections = sorted_projections(ref)
            return sliced_w2_from_projections(sorted_projections(samples), self._reference_projections)
        if metric in TOY_METRICS:
            ref = self.dataset.reference(self.ecfg.num_samples, self.cfg.train.seed)
            return TOY_METRICS[metric](samples, ref)
        if metric == "fd_digits":
            from .fid import digits_fd

            return digits_fd(samples.clamp(-1, 1))
        if metric == "class_acc":
            from .fid import digits_class_accuracy

            return digits_class_accuracy(samples, self.labels)
        raise ValueError(f"eval.metrics: unknown metric {metric!r}; allowed sw2, energy, fd_digits, class_acc "
                         "(image FID at paper scale runs through `dynamics fid`)")

    @torch.no_grad()
    def samples(self, model: nn.Module, mode: str, nfe: int, batch: int = 2048) -> torch.Tensor:
        out = []
        for i in range(0, len(self.noise), batch):
            noise = self.noise[i:i + batch].to(self.device)
            labels = None if self.labels is None else self.labels[i:i + batch].to(self.device)
            out.append(generate(model, noise, nfe, mode, labels).float().cpu())
        return torch.cat(out)

    def __call__(self, model: nn.Module, step: int, final: bool = False) -> list[dict]:
        """Rows for eval.nfe / nfe_v, plus eval.final_nfe / final_nfe_v at the run's last step (`final`)."""
        metrics = [m for m in self.ecfg.metrics if m != "fid"]
        if not metrics:
            return []
        rows = []
        e = self.ecfg
        for mode, nfes in (("u", e.nfe + (e.final_nfe if final else [])),
                           ("v", e.nfe_v + (e.final_nfe_v if final else []))):
            for nfe in sorted(set(nfes)):
                samples = self.samples(model, mode, nfe)
                for metric in metrics:
                    floor, ceiling = self.bounds(metric)
                    rows.append({"step": step, "metric": metric, "sampler": mode, "nfe": nfe,
                                 "value": self.distance(metric, samples), "floor": floor, "ceiling": ceiling})
        return rows

    def grid_samplers(self) -> list[tuple[str, int]]:
        """The samplers this run evaluates, as (mode, nfe): the grid's blocks, left to right."""
        return [("u", n) for n in self.ecfg.nfe] + [("v", n) for n in self.ecfg.nfe_v]

    def grid_png(self, model: nn.Module, path, per_class: int = 10) -> None:
        """A PNG of samples per class and sampler (image data only; toy runs have `dynamics sample --png`)."""
        from .grid import image_grid, write_png

        if len(self.dataset.shape) != 3 or self.dataset.shape[0] not in (1, 3):
            return  # latents (4 channels) are not pictures
        mosaic = image_grid(model, tuple(self.dataset.shape), getattr(self.dataset, "num_classes", 0),
                            self.grid_samplers(), per_class, seed=self.cfg.train.seed, device=self.device)
        write_png(path, mosaic)
