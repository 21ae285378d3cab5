"""Built-in reference classifiers: logistic regression, k-nearest neighbours and a small CNN.

Ordinary discriminative classifiers, trained on the run's training split and scored on the same test
subset the diffusion classifiers classify, so the table says whether a diffusion classifier is any good
here. ``logistic`` and ``knn`` are scikit-learn's, on the flattened samples standardised with the
training split's mean and spread; ``cnn`` is a small convolutional network trained by diffbench (torch,
seeded, a few epochs of Adam on the CPU). ``cnn`` takes images only: on other data the row is skipped in
one line (it refuses; it does not fall back to another classifier).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

import diffbench


def flat(x: torch.Tensor) -> np.ndarray:
    return x.reshape(x.shape[0], -1).double().numpy()


class Standardised:
    """A scikit-learn classifier on flattened samples, standardised with the training split's statistics."""

    def fit_scaled(self, model: Any, x: torch.Tensor, y: torch.Tensor, num_classes: int) -> None:
        data = flat(x)
        self.mean, self.scale = data.mean(0), data.std(0) + 1e-6
        self.model, self.num_classes = model, num_classes
        self.model.fit((data - self.mean) / self.scale, y.numpy())

    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        got = self.model.predict_proba((flat(x) - self.mean) / self.scale)
        out = np.zeros((x.shape[0], self.num_classes))
        out[:, self.model.classes_] = got  # a class absent from training keeps probability 0
        return torch.from_numpy(out).float()


class Logistic(Standardised, diffbench.Reference):
    """Multinomial logistic regression (scikit-learn, L2 penalty of strength 1/C)."""

    name = "logistic"
    params = {"C": 1.0, "max_iter": 1000}

    def validate(self) -> None:
        if self.params["C"] <= 0 or self.params["max_iter"] < 1:
            raise diffbench.ParamError(f"logistic: C must be > 0 and max_iter >= 1, got {self.params}")

    def fit(self, x: torch.Tensor, y: torch.Tensor, num_classes: int, seed: int) -> None:
        from sklearn.linear_model import LogisticRegression

        model = LogisticRegression(C=self.params["C"], max_iter=self.params["max_iter"], random_state=seed)
        self.fit_scaled(model, x, y, num_classes)


class KNN(Standardised, diffbench.Reference):
    """k-nearest neighbours (scikit-learn, Euclidean distance, uniform or distance weights)."""

    name = "knn"
    params = {"k": 5, "weights": diffbench.Choice("uniform", "distance")}

    def validate(self) -> None:
        if self.params["k"] < 1:
            raise diffbench.ParamError(f"knn: k must be >= 1, got {self.params['k']}")

    def fit(self, x: torch.Tensor, y: torch.Tensor, num_classes: int, seed: int) -> None:
        from sklearn.neighbors import KNeighborsClassifier

        k = min(self.params["k"], x.shape[0])
        self.fit_scaled(KNeighborsClassifier(n_neighbors=k, weights=self.params["weights"]), x, y, num_classes)


#: Images at least this many pixels on a side enter the first convolution with stride 2 (4x less compute on
#: 28x28 MNIST, where the network would otherwise spend minutes per run on 2 cores).
STRIDE_FROM = 16


class SmallCNN(nn.Module):
    """Two 3x3 convolutions (16, 32 channels) with max pooling, global average pooling and a linear layer;
    the first convolution strides 2 on images of ``STRIDE_FROM`` pixels a side or more."""

    def __init__(self, channels: int, num_classes: int, size: int = 8) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, 16, 3, stride=2 if size >= STRIDE_FROM else 1, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2, ceil_mode=True),
        )
        self.head = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))


class CNN(diffbench.Reference):
    """A small CNN trained by diffbench (seeded Adam, a few epochs on the CPU); images [C, H, W] only."""

    name = "cnn"
    accepts = "images [C, H, W]"
    params = {"epochs": 10, "batch_size": 64, "lr": 3e-3}

    def validate(self) -> None:
        p = self.params
        if p["epochs"] < 1 or p["batch_size"] < 1 or p["lr"] <= 0:
            raise diffbench.ParamError(f"cnn: epochs and batch_size must be >= 1 and lr > 0, got {p}")

    def supports(self, data_shape: tuple[int, ...]) -> bool:
        return len(data_shape) == 3

    def fit(self, x: torch.Tensor, y: torch.Tensor, num_classes: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # the layers' initial weights
            self.net = SmallCNN(x.shape[1], num_classes, min(x.shape[2:]))
        self.mean, self.scale = x.mean(), x.std() + 1e-6
        inputs = (x.float() - self.mean) / self.scale
        optimiser = torch.optim.Adam(self.net.parameters(), lr=self.params["lr"])
        self.net.train()
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # its ops are tiny: on a busy CPU, contending OpenMP threads make them 100x slower
        try:
            self.train_epochs(inputs, y, optimiser, generator)
        finally:
            torch.set_num_threads(threads)
        self.net.eval()

    def train_epochs(self, inputs: torch.Tensor, y: torch.Tensor, optimiser, generator: torch.Generator) -> None:
        batch = self.params["batch_size"]
        with torch.enable_grad():
            for _ in range(self.params["epochs"]):
                order = torch.randperm(inputs.shape[0], generator=generator)
                for start in range(0, inputs.shape[0], batch):
                    chosen = order[start : start + batch]
                    loss = nn.functional.cross_entropy(self.net(inputs[chosen]), y[chosen])
                    optimiser.zero_grad()
                    loss.backward()
                    optimiser.step()

    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.net((x.float() - self.mean) / self.scale).softmax(1)


@diffbench.hookimpl
def register_references(register):
    for cls in (Logistic, KNN, CNN):
        register(cls)
