"""Command line: ``python -m cbn demo``."""
import argparse
import sys
import time

from cbn import Adam, Network
from cbn._datasets import load_digits_split


def demo(args):
    """Train on the digits data with batch norm and without; report accuracy and time."""
    X_train, y_train, X_test, y_test = load_digits_split(seed=args.seed)
    print(f"digits: {len(X_train)} training and {len(X_test)} held-out images of 8x8 pixels, "
          f"10 classes")
    for batchnorm in (True, False):
        net = Network([64, 128, 64, 10], activation="relu", output="softmax",
                      batchnorm=batchnorm, optimizer=Adam(lr=args.lr), dtype=args.dtype,
                      seed=args.seed)
        print(f"\n{'with' if batchnorm else 'without'} batch norm: {net}")
        start = time.perf_counter()
        net.fit(X_train, y_train, epochs=args.epochs, batch_size=args.batch_size,
                validation_data=(X_test, y_test), verbose=1)
        seconds = time.perf_counter() - start
        accuracy = net.evaluate(X_test, y_test)["accuracy"]
        print(f"{'with' if batchnorm else 'without'} batch norm: held-out accuracy "
              f"{accuracy:.4f}, trained in {seconds:.2f} s")
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m cbn", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("demo", help="train on the digits data with and without batch norm")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=demo)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
