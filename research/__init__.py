"""Studies of kronos-qlib: research about the product, run as ``python -m research.<study>`` from the repository
root; not installed. Each study writes its section of the findings page research/RESULTS.md (research.results)
beside its records and plots; the rules that choose settings on valid are research.selection."""
