#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what the tests need on a fresh Debian machine,
# then rustfmt check, clippy (warnings denied), and every test with nextest (unit, property,
# fuzz-corpus replay, end-to-end over real sockets and processes). There is no doc-test step:
# `cargo test --doc` would build the workspace a second time (a rustdoc pass and a test binary
# per crate) for a handful of examples, so every crate sets `doctest = false` and its examples
# are `text` or compiled as unit tests.
set -euo pipefail
# CI builds from scratch once: incremental caches would only cost disk and time.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
cd "$(dirname "$0")/.."

need_apt=()
command -v cc >/dev/null 2>&1 || need_apt+=(build-essential)
# Tests start real redis-server processes on free loopback ports (never a system service).
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
# The power-loss tests mount testkit's LazyFs (FUSE): fusermount3 for mounting as non-root.
# They need /dev/fuse (a container needs --device /dev/fuse) and skip, saying so, without it.
command -v fusermount3 >/dev/null 2>&1 || need_apt+=(fuse3)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "==> installing ${need_apt[*]}"
  if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
  # The Debian package starts a system redis on 6379; the tests never use it.
  command -v systemctl >/dev/null 2>&1 && $SUDO systemctl disable --now redis-server >/dev/null 2>&1 || true
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "==> installing cargo-nextest"
  cargo install cargo-nextest --locked
fi
rustup component list --installed 2>/dev/null | grep -q rustfmt || rustup component add rustfmt clippy 2>/dev/null || true

echo "==> rustfmt"
cargo fmt --all -- --check
echo "==> proto stays sans-IO (no tokio, mio, quinn or socket2 in its default dependencies)"
if cargo tree -p tern-proto -e normal --prefix none --locked | grep -E '^(tokio|tokio-util|mio|quinn|socket2) '; then
  echo "tern-proto must not depend on an I/O runtime"; exit 1
fi
echo "==> clippy"
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings
# Last, so that its summary closes the log.
echo "==> tests"
cargo nextest run --workspace --all-features --locked --no-fail-fast
