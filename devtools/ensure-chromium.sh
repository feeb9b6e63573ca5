#!/usr/bin/env bash
# The console's browser tests drive Debian's Chromium (never a Playwright browser
# download). Install it when it is missing and we may (root with apt-get);
# otherwise say how, and let the browser test report the missing binary.
set -eu
chromium=${CHROMIUM_PATH:-/usr/bin/chromium}
[ -x "$chromium" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian's chromium for the browser tests" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
else
    echo "warning: $chromium is missing; the browser tests will fail (sudo apt-get install chromium)" >&2
fi
