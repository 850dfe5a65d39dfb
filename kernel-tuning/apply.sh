#!/usr/bin/env bash
# apply.sh PROFILE [--dry-run]: applies a Tern kernel profile to this host.
#   1. sysctl -w for every key (an at-least `>=` key already higher is kept, never lowered),
#      each value read back from /proc/sys to confirm it took;
#   2. /etc/sysctl.d/90-tern-PROFILE.conf so the values survive a reboot;
#   3. the profile's limits file into /etc/security/limits.d/ (PAM login sessions);
#   4. the profile's systemd drop-in into /etc/systemd/system/UNIT.d/, then daemon-reload.
# With --dry-run it changes nothing and prints every command and file it would write.
# It validates the whole profile first, refuses to run without root unless --dry-run, and stops
# at the first failing step (steps already done stay done; rerunning is safe).
# Exit status: 0 done, 1 a step failed, 2 usage or profile error (or not root).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib/profile.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/profile.sh"

usage() {
  echo "usage: $TT_PROG PROFILE [--dry-run]    (PROFILE: a name in kernel-tuning/profiles/ or a path)" >&2
  exit 2
}

dry_run=0
profile=""
for arg in "$@"; do
  case "$arg" in
    --dry-run | -n) dry_run=1 ;;
    -h | --help | -*) usage ;;
    *)
      [[ -z "$profile" ]] || usage
      profile="$arg"
      ;;
  esac
done
[[ -n "$profile" ]] || usage

tt_resolve_profile "$profile"
tt_parse_profile
nofile_hard=""
if [[ -n "$TT_LIMITS" ]]; then
  nofile="$(tt_limits_nofile "$TT_LIMITS")"
  nofile_hard="${nofile#* }"
fi
if [[ $dry_run -eq 0 && "$(id -u)" -ne 0 ]]; then
  tt_usage_error "must run as root to change kernel settings (use --dry-run to only print)"
fi
if [[ $dry_run -eq 0 && "$TT_PROC_SYS" != /proc/sys ]]; then
  tt_usage_error "TERN_TUNING_PROC_SYS is for --dry-run and check.sh only"
fi

fail() {
  echo "$TT_PROG: error: $*; stopping (earlier steps stay applied)" >&2
  exit 1
}

# Shell-quoted rendering of a command line, for display only.
render() {
  local out="" a
  for a in "$@"; do
    if [[ "$a" =~ ^[A-Za-z0-9_./:=@%+-]+$ ]]; then
      out+=" $a"
    elif [[ "$a" =~ ^([A-Za-z0-9_.-]+)=([^\']*)$ ]]; then
      out+=" ${BASH_REMATCH[1]}='${BASH_REMATCH[2]}'"
    else
      out+=" '${a//\'/\'\\\'\'}'"
    fi
  done
  echo "${out# }"
}

# run CMD...: the only place a command with effects is executed.
run() {
  if [[ $dry_run -eq 1 ]]; then
    echo "would run: $(render "$@")"
  else
    echo "+ $(render "$@")"
    "$@" || fail "'$(render "$@")' exited $?"
  fi
}

mode="applying"
[[ $dry_run -eq 1 ]] && mode="dry run (nothing is changed)"
echo "profile $TT_PROFILE_NAME ($TT_PROFILE_FILE): $mode"

# Preflight, before any change: every key must exist, except net.netfilter.* keys, which exist
# only while nf_conntrack is loaded; and nofile must fit under fs.nr_open.
declare -a persist=()
want_nr_open=""
for i in "${!TT_KEYS[@]}"; do
  key="${TT_KEYS[$i]}"
  [[ "$key" == fs.nr_open ]] && want_nr_open="${TT_VALUES[$i]}"
  if [[ ! -e "$(tt_proc_path "$key")" && "$key" != net.netfilter.* ]]; then
    fail "$key does not exist on this kernel ($(tt_proc_path "$key"))"
  fi
done
if [[ -n "$nofile_hard" ]]; then
  nr_open="${want_nr_open:-$(tt_read_current fs.nr_open || echo 1048576)}"
  tt_num_ge "$nofile_hard" "$nr_open" &&
    tt_usage_error "nofile $nofile_hard in $TT_LIMITS must be below fs.nr_open ($nr_open)"
fi

echo "== 1. sysctl"
for i in "${!TT_KEYS[@]}"; do
  key="${TT_KEYS[$i]}" op="${TT_OPS[$i]}" wanted="${TT_VALUES[$i]}"
  rc=0
  current="$(tt_read_current "$key")" || rc=$?
  value="$wanted"
  if [[ $rc -eq 1 ]]; then
    echo "skip $key: absent on this kernel (nf_conntrack not loaded); kept in the sysctl.d file"
    persist+=("-$key = $wanted")
    continue
  fi
  if [[ $rc -eq 0 && "$op" == ">=" ]] && tt_matches "$op" "$wanted" "$current"; then
    echo "keep $key: current $current >= $wanted (not lowered)"
    value="$current"
  else
    run sysctl -w "$key=$wanted"
    if [[ $dry_run -eq 0 ]]; then
      now="$(tt_read_current "$key")" || fail "cannot read $key back"
      tt_matches "=" "$wanted" "$now" || fail "$key reads back '$now' after writing '$wanted'"
    fi
  fi
  if [[ "$key" == net.netfilter.* ]]; then
    persist+=("-$key = $value") # `-`: ignore at boot if nf_conntrack is not loaded yet
  else
    persist+=("$key = $value")
  fi
done

echo "== 2. persist: /etc/sysctl.d/90-tern-$TT_PROFILE_NAME.conf"
sysctl_conf="/etc/sysctl.d/90-tern-$TT_PROFILE_NAME.conf"
content="$(
  echo "# Written by Tern kernel-tuning/apply.sh from profiles/$TT_PROFILE_NAME.conf; edit the profile, not this file."
  echo "# At-least keys hold max(profile, value found when applied). '-' = skip if the key is absent."
  printf '%s\n' "${persist[@]}"
)"
if [[ $dry_run -eq 1 ]]; then
  echo "would write $sysctl_conf:"
  while IFS= read -r l; do echo "    $l"; done <<<"$content"
else
  tmp="$(mktemp)"
  trap 'rm -f "$tmp"' EXIT
  printf '%s\n' "$content" >"$tmp"
  run install -D -m 0644 "$tmp" "$sysctl_conf"
fi

echo "== 3. limits"
if [[ -n "$TT_LIMITS" ]]; then
  run install -D -m 0644 "$TT_LIMITS" "/etc/security/limits.d/90-$(basename "$TT_LIMITS")"
else
  echo "(profile has no @limits)"
fi

echo "== 4. systemd drop-in"
if [[ -n "$TT_SYSTEMD" ]]; then
  unit_dir="/etc/systemd/system/$(basename "$TT_SYSTEMD")"
  for f in "$TT_SYSTEMD"/*.conf; do
    [[ -f "$f" ]] || fail "no .conf file in $TT_SYSTEMD"
    run install -D -m 0644 "$f" "$unit_dir/$(basename "$f")"
  done
  if command -v systemctl >/dev/null 2>&1 && [[ -d /run/systemd/system ]]; then
    run systemctl daemon-reload
    echo "restart the unit to pick up its new limits: systemctl restart $(basename "$TT_SYSTEMD" .d)"
  else
    echo "(systemd is not running here: no daemon-reload)"
  fi
else
  echo "(profile has no @systemd)"
fi

if [[ $dry_run -eq 1 ]]; then
  echo "dry run: nothing was changed"
else
  echo "done; verify with: $(dirname "$0")/check.sh $TT_PROFILE_NAME"
fi
