"""The `rjn` command (its console script) and `python -m rjn`."""

import gc


def main() -> None:
    """Set the collector for a command, then hand over to the CLI."""
    # A command makes some 200,000 objects as it starts, nearly all kept until it exits. At the
    # default threshold the collector walks them again and again while they are made, and
    # once more at exit: a fifth of each command's start-up. Every 50,000 allocations instead
    # (a long watch still has its cycles collected), and none of them at exit.
    gc.set_threshold(50_000)
    from rjn.cli import main as cli

    try:
        cli()
    finally:
        gc.freeze()


if __name__ == "__main__":
    main()
