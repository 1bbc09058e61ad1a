"""Learning curves on the digits data, with batch norm and without, saved as a PNG.

    pip install "cbn[demo,plot]"
    python examples/digits_learning_curves.py            # writes digits_learning_curves.png

A deep network of sigmoid layers trained by plain SGD is the textbook case for batch
normalization: without it the gradients reaching the first layers are tiny and the network
barely learns; with it every layer's inputs stay centred and scaled and training takes off.
The learning rate decays as the lecture's lr0 / (1 + decay * epoch), which calms the
validation curve of the batch-norm run in the later epochs.
"""
import argparse

import cbn
from cbn.datasets import load_digits_split


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="digits_learning_curves.png")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--lr", type=float, default=0.1, help="lr0 of the decay")
    parser.add_argument("--decay", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    X_train, y_train, X_test, y_test = load_digits_split(seed=args.seed)
    histories = {}
    for batchnorm in (True, False):
        net = cbn.Network([64, 100, 100, 100, 100, 10], activation="sigmoid",
                          batchnorm=batchnorm, optimizer=cbn.SGD(lr=args.lr), seed=args.seed)
        label = "batch norm" if batchnorm else "no batch norm"
        history = net.fit(X_train, y_train, epochs=args.epochs, batch_size=32,
                          validation_data=(X_test, y_test),
                          lr_schedule=cbn.InverseTimeDecay(args.lr, args.decay))
        histories[label] = history
        print(f"{label:>13}: held-out accuracy after {args.epochs} epochs "
              f"{history['val_accuracy'][-1]:.3f} (best {max(history['val_accuracy']):.3f})")
    cbn.plot_history(histories, args.out,
                     title=f"digits: 4 sigmoid hidden layers of 100, SGD, "
                           f"lr = {args.lr}/(1 + {args.decay}·epoch)")
    print(f"curves saved to {args.out}")


if __name__ == "__main__":
    main()
