"""The benchmark scenarios, one module each (see `bench/__main__.py` for what each has)."""
