#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what the tests need on a fresh Debian machine,
# then rustfmt check, clippy (warnings denied), every test with nextest (unit, property,
# fuzz-corpus replay, end-to-end over real sockets and processes), and the doc tests.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v cc >/dev/null 2>&1 || need_apt+=(build-essential)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "==> installing ${need_apt[*]}"
  if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq "${need_apt[@]}"
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "==> installing cargo-nextest"
  cargo install cargo-nextest --locked
fi
rustup component list --installed 2>/dev/null | grep -q rustfmt || rustup component add rustfmt clippy 2>/dev/null || true

echo "==> rustfmt"
cargo fmt --all -- --check
echo "==> clippy"
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings
echo "==> tests"
cargo nextest run --workspace --all-features --locked --no-fail-fast
echo "==> doc tests"
cargo test --workspace --all-features --locked --doc
