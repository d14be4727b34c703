"""`crew eval`: does the team beat one model, on this machine, with these models?

`suites` reads exercises (crew's layout, HumanEval JSONL, aider's polyglot folders); `grading`
runs an exercise's hidden tests on a copy of the workspace; `runner` runs each exercise under
each configuration (team, solo, and the harness checks reference and empty) with the same
residency manager and accounting as a real run; `report` writes eval.json and eval.md.
"""
