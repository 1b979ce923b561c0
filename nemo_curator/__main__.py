"""``python -m nemo_curator``: the ``nemo-curator`` command line."""

from nemo_curator.cli import main

if __name__ == "__main__":
    main()
