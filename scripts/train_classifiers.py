"""Re-make the shipped image classifiers on their data set's train split (one thread, seeded).

    python scripts/train_classifiers.py mnist            # flowmap/assets/mnist_classifier.safetensors
    python scripts/train_classifiers.py digits mnist

Each prints its held-out accuracy (the test split is never seen in training) and stores it in the
file's metadata. The digits classifier shipped before this script was made by the same function.
"""

from __future__ import annotations

import argparse

import torch

from flowmap.classifier import classifier_path, save_classifier, train_classifier
from flowmap.data import load_data

EPOCHS = {"digits": 60, "mnist": 20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", nargs="+", choices=sorted(EPOCHS))
    args = ap.parse_args()
    torch.set_num_threads(1)
    for name in args.data:
        data = load_data(name)
        net = train_classifier(data.x_train, data.y_train, epochs=EPOCHS[name])
        with torch.inference_mode():
            acc = float((net(data.x_test).argmax(1) == data.y_test).double().mean())
        save_classifier(net, classifier_path(name), acc)
        print(f"{name}: held-out accuracy {acc:.4f} -> {classifier_path(name)}")


if __name__ == "__main__":
    main()
