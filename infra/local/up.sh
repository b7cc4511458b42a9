#!/usr/bin/env sh
# Start the local stack (Ray head + worker with token auth, mlflow server, moto S3; all on 127.0.0.1) and print the
# environment variables that point jobs at it. See stack.py for the settings. PYTHON: the venv's interpreter.
exec "${PYTHON:-.venv/bin/python}" "$(dirname "$0")/stack.py" up
