"""``python evaluate.py ...``: the same as ``segexp eval ...`` (``segexp.cli.evaluate``)."""

from segexp.cli.evaluate import main

if __name__ == "__main__":
    main()
