"""What the agents can reach: the run's workspace (a git repository and crew's records beside it),
the sandbox their commands run in, and their tools bound to both."""
