#!/usr/bin/env bash
# Make a Chromium available for the browser tests (tests/test_console_browser.py).
#
# A Chromium on PATH (chromium, chromium-browser, google-chrome; or FLASHSALE_CHROMIUM) is
# used as it is. Otherwise, as root on Debian, Debian's `chromium` package is installed.
# Failing that, one line says so and the browser tests will be skipped with the reason:
# this script never fails the build.
set -uo pipefail

ME="browser.sh"
say() { printf '%s: %s\n' "$ME" "$*"; }

found() {
    if [[ -n "${FLASHSALE_CHROMIUM:-}" ]]; then
        command -v "$FLASHSALE_CHROMIUM" >/dev/null 2>&1
        return
    fi
    local name
    for name in chromium chromium-browser google-chrome google-chrome-stable; do
        command -v "$name" >/dev/null 2>&1 && return 0
    done
    return 1
}

found && exit 0
if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    say "Chromium is not installed; installing Debian's chromium with apt-get for the browser tests ..."
    if apt-get update -qq >/dev/null 2>&1 &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1 && found; then
        exit 0
    fi
    say "apt-get install chromium failed, so the browser tests will be skipped (install chromium by hand to run them)."
    exit 0
fi
say "no Chromium, and it cannot be installed here (needs root and apt-get), so the browser tests will be skipped; install chromium to run them."
