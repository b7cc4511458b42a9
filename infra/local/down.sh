#!/usr/bin/env sh
# Stop exactly what up.sh started (by the process groups it recorded), nothing else; never `ray stop`.
exec "${PYTHON:-.venv/bin/python}" "$(dirname "$0")/stack.py" down
