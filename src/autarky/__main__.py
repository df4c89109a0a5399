"""`python -m autarky ...` (what `torchrun -m autarky train ...` runs on every rank)."""

from autarky.cli import main

if __name__ == "__main__":
    main()
