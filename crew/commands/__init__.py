"""The commands a person runs: `crew run`, `crew chat` and `crew review`, each a coroutine that
takes settings and emits events."""
