"""The terminal: the command line, the exit table, the renderers, the status line and the line
editor. The only layer that prints; everything below it emits typed events."""
