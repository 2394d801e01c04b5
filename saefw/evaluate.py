"""``python -m saefw.evaluate``: the command's name users know; it lives in ``saefw/evals/command.py``."""
from saefw.evals.command import main

if __name__ == "__main__":
    main()
