"""Development tooling, not shipped in the wheel.

`./dev` imports `processes`, `venv`, `servers` and `commands`: standard library
only, since they run before the virtual environment exists. `demo` (the demo
switch of `./dev run`) and `testing` (helpers shared by tests/ and bench/) run
inside the virtual environment.
"""
