"""A bidirectional GRU classifier on the 8x8 digits read row by row (8 steps of 8 pixels).

The model pools each sequence with ``pool="final"`` (each direction's final hidden state: the
forward one after the last row, the backward one after the first), as a bidirectional classifier
should: scored at the last step only, its backward direction would have seen one row. Trained with
``jrnn.train.fit`` (accuracy tracked on a validation split, early stopping, the best step kept),
then scored on a held-out test split. Needs the ``data`` extra (scikit-learn ships the digits).

    python examples/sequence_classification.py [--steps 400]
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

import jrnn
from jrnn import datasets, train
from jrnn.optim import make_optimizer


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=400, help="training steps (default: 400)")
    parser.add_argument("--hidden", type=int, default=32, help="GRU units per direction (default: 32)")
    args = parser.parse_args(argv)

    xs, labels = datasets.digits()  # (1797, 8, 8), (1797,)
    order = np.random.default_rng(0).permutation(len(xs))
    test, val, fit_rows = order[:360], order[360:540], order[540:]

    model = jrnn.RNN(jrnn.GRUCell(args.hidden), bidirectional=True, pool="final", output_size=10)
    params = model.init(jax.random.PRNGKey(0), input_size=8)
    result = train.fit(
        model, params, make_optimizer("adam", 1e-2, clip_norm=1.0), (xs[fit_rows], labels[fit_rows]),
        steps=args.steps, batch_size=64, loss="cross_entropy", metrics=("accuracy",),
        eval_data=(xs[val], labels[val]), eval_every=max(1, args.steps // 10),
        early_stopping=train.EarlyStopping(patience=4, metric="accuracy"), progress=False,
    )
    scores = train.evaluate(model, result.params, (xs[test], labels[test]), loss="cross_entropy",
                            metrics=("accuracy",))
    print(f"steps run: {result.step}; validation accuracy (last): {result.history['eval']['accuracy'][-1]:.3f}")
    print(f"test accuracy: {scores['accuracy']:.3f}")
    return float(scores["accuracy"])


if __name__ == "__main__":
    main()
