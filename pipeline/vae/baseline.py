"""Containers that are not generative models themselves.

- `PerModality`: one unimodal model per modality (M2, SDGM), trained side by side. Their
  parameters are disjoint, so minimising the sum of their losses trains each exactly as
  if alone (Adam's updates are per parameter).
- `LabelledOnly`: an MLP classifier per input (each modality, and all together) trained
  with cross-entropy on the labelled examples alone, with the same layers as q(y|x). Its
  accuracies show what the unlabelled data bought the semi-supervised models.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

from pipeline.vae.layers import CategoricalHead, Trunk
from pipeline.vae.objective import Batch, SemiSupervisedVAE, Tensors


class PerModality(nn.Module):
    def __init__(self, dims: Mapping[str, int],
                 build: Callable[[dict[str, int]], SemiSupervisedVAE]) -> None:
        super().__init__()
        self.modalities = list(dims)
        self.models = nn.ModuleDict({m: build({m: dim}) for m, dim in dims.items()})

    def loss(self, labelled: Batch, unlabelled: Batch) -> tuple[torch.Tensor, Tensors]:
        total, logged = 0.0, {}
        for m, model in self.models.items():
            loss, terms = model.loss(Batch({m: labelled.x[m]}, labelled.y),
                                     Batch({m: unlabelled.x[m]}))
            total = total + loss
            logged |= {f"{m}/{k}": v for k, v in terms.items()}
        return total, logged

    @property
    def latent_classifier(self) -> bool:
        return all(model.latent_classifier for model in self.models.values())

    def classify(self, x: Tensors, method: str = "joint", *, samples: int = 0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        if len(x) != 1:
            raise ValueError(f"a unimodal model takes one modality, got {list(x)}")
        (m, xm), = x.items()
        return self.models[m].classify({m: xm}, method, samples=samples, generator=generator)


def input_key(modalities: list[str] | tuple[str, ...]) -> str:
    """Metrics key of an input combination: 'rgb', 'depth', 'rgb+depth'."""
    return "+".join(modalities)


class LabelledOnly(nn.Module):
    def __init__(self, dims: Mapping[str, int], n_classes: int, *, hidden: int,
                 dropout: float) -> None:
        super().__init__()
        self.modalities = list(dims)
        inputs = [(m,) for m in dims] + [tuple(dims)]
        self.trunks = nn.ModuleDict(
            {input_key(ms): Trunk({m: dims[m] for m in ms}, hidden) for ms in inputs})
        self.heads = nn.ModuleDict(
            {key: CategoricalHead(t.out_features, n_classes, dropout)
             for key, t in self.trunks.items()})

    def loss(self, labelled: Batch, unlabelled: Batch) -> tuple[torch.Tensor, Tensors]:
        logged, total = {}, 0.0
        for key in self.trunks:
            ce = nn.functional.cross_entropy(self._logits(key, labelled.x), labelled.y)
            total = total + ce
            logged[f"{key}/cross_entropy"] = ce.detach()
        return total, logged

    def _logits(self, key: str, x: Tensors) -> torch.Tensor:
        names = self.trunks[key].names
        return self.heads[key](self.trunks[key](**{m: x[m] for m in names}))

    latent_classifier = False

    def classify(self, x: Tensors, method: str = "joint", *, samples: int = 0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        logits = self._logits(input_key([m for m in self.modalities if m in x]), x)
        return torch.log_softmax(logits, -1)
