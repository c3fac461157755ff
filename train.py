"""``python train.py ...``: the same as ``segexp train ...`` (``segexp.cli.train``)."""

from segexp.cli.train import main

if __name__ == "__main__":
    main()
