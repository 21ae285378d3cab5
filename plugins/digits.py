"""Dataset `digits`: scikit-learn's bundled 8x8 handwritten digits (no download), as [1, 8, 8] in [-1, 1]."""

from __future__ import annotations

import torch

import diffbench


class Digits(diffbench.Dataset):
    """scikit-learn's 1,797 bundled 8x8 digits, 10 classes, a fixed stratified split."""

    name = "digits"
    params = {"test_fraction": 0.2}

    def validate(self) -> None:
        if not 0 < self.params["test_fraction"] < 1:
            raise diffbench.ParamError("digits needs 0 < test_fraction < 1")

    def load(self, seed: int) -> diffbench.Splits:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        data = load_digits()
        x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16 * 2 - 1
        y = torch.tensor(data.target, dtype=torch.long)
        # The split is fixed (random_state=0) so that every seed classifies the same test set.
        train_idx, test_idx = train_test_split(
            torch.arange(len(y)).numpy(), test_size=self.params["test_fraction"], stratify=y.numpy(), random_state=0
        )
        train_idx, test_idx = torch.as_tensor(train_idx), torch.as_tensor(test_idx)
        names = [str(d) for d in data.target_names]
        return diffbench.Splits(x[train_idx], y[train_idx], x[test_idx], y[test_idx], names)


@diffbench.hookimpl
def register_datasets(register):
    register(Digits)
