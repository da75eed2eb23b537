#!/usr/bin/env bash
# Installs Debian's chromium, which the HTML report's browser tests use
# (tests/test_experiment.py, tests/test_experiment_report.py: the page renders, logs no
# console error, and its embedded plots decode). Guarded: where it cannot install (no
# apt-get, no root, no package registry) it says so and exits 0, and those tests skip
# with that reason. Playwright's own browser download does not work here; Debian's does.
set -uo pipefail
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "[browser] no apt-get here: the browser tests will skip"
    exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo -n"
fi
log=$(mktemp)
if $sudo apt-get update -qq >"$log" 2>&1 && $sudo apt-get install -y -qq chromium >>"$log" 2>&1; then
    echo "[browser] installed $(chromium --version 2>/dev/null | tail -1)"
else
    echo "[browser] could not install chromium (log: $log): the browser tests will skip"
fi
exit 0
