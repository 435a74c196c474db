"""The MLflow mirror of runs, pushed versions and monitor windows, and the registry
alias that follows the served version (issue 18). Imports only core."""
