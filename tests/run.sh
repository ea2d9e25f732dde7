#!/usr/bin/env bash
# Every test: installs what the tests use (tests/setup.sh --tests), builds, then runs the whole
# suite, including the tests that need Chromium and coturn, offline inside a network namespace
# whose only interface is loopback, so no test packet can leave 127.0.0.0/8.
set -euo pipefail
cd "$(dirname "$0")/.."

bash tests/setup.sh --tests
cargo build --all-features --tests --bins --examples
cargo build --lib --no-default-features   # the SDK alone, without TLS
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --all-features --quiet   # the rustdoc builds without a warning

# First every test that needs no browser or TURN server; then those (marked #[ignore]), last, so
# that Chromium's processes winding down never share the machine with the audio tests.
run='ip link set lo up || exit 1
cargo test --offline --all-features --no-fail-fast; first=$?
cargo test --offline --all-features --no-fail-fast --test turn --test browser --test life -- --ignored; last=$?
exit $(( first | last ))'
if [ "$(id -u)" = 0 ]; then
  unshare --net bash -c "$run"
else
  unshare --map-root-user --net bash -c "$run"
fi
