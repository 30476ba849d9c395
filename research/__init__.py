"""Studies of kronos-qlib: research about the product, run as ``python -m research.<study>`` from the repository
root; not installed."""
