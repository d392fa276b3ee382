"""The `apunet` command installed with the Python package: the same command line as the binary."""
import sys

from . import _apunet


def main() -> None:
    sys.exit(_apunet.run_cli(["apunet"] + sys.argv[1:]))


if __name__ == "__main__":
    main()
