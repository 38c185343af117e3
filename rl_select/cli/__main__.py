"""``python -m rl_select.cli``: the ``rl-select`` command line."""

from rl_select.cli import main

if __name__ == "__main__":
    main()
