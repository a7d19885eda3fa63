"""`python -m cachewire`: the same as the `cachewire` command."""

from cachewire.cli import main

if __name__ == "__main__":
    main()
