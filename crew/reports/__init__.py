"""Reports: what crew can tell before a run (`crew doctor`, `crew plan`), of past runs (`crew runs`)
and of one run's residency over time (the timeline)."""
