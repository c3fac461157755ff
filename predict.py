"""``python predict.py ...``: the same as ``segexp predict ...`` (``segexp.cli.predict``)."""

from segexp.cli.predict import main

if __name__ == "__main__":
    main()
