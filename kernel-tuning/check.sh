#!/usr/bin/env bash
# check.sh PROFILE: compares this host's kernel settings and the current process's open-file
# limit with a Tern profile (kernel-tuning/profiles/PROFILE.conf, or a path). Read-only: it
# reads /proc/sys and `ulimit`, and changes nothing.
#
# Prints one row per key: KEY, WANTED (`>= N` for at-least keys), CURRENT, STATUS where
#   OK       current matches (`=`: every field equal; `>=`: current is at least the value)
#   DIFFERS  current does not match (or cannot be read)
#   MISSING  the key does not exist on this kernel (e.g. nf_conntrack not loaded)
# then the soft and hard `ulimit -n` of this shell against the profile's limits file.
#
# Exit status: 0 everything matches, 1 something DIFFERS or is MISSING, 2 usage/profile error.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib/profile.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/profile.sh"

usage() {
  echo "usage: $TT_PROG PROFILE    (PROFILE: a name in kernel-tuning/profiles/ or a path)" >&2
  exit 2
}

[[ $# -eq 1 ]] || usage
case "$1" in -h | --help | -*) usage ;; esac

tt_resolve_profile "$1"
tt_parse_profile

ok=0 differs=0 missing=0
row() { printf '%-52s %-26s %-26s %s\n' "$@"; }

echo "profile $TT_PROFILE_NAME ($TT_PROFILE_FILE) on $(uname -n), kernel $(uname -r)"
row KEY WANTED CURRENT STATUS
for i in "${!TT_KEYS[@]}"; do
  key="${TT_KEYS[$i]}" op="${TT_OPS[$i]}" wanted="${TT_VALUES[$i]}"
  shown="$wanted"
  [[ "$op" == ">=" ]] && shown=">= $wanted"
  rc=0
  current="$(tt_read_current "$key")" || rc=$?
  if [[ $rc -eq 1 ]]; then
    row "$key" "$shown" "-" MISSING
    missing=$((missing + 1))
  elif [[ $rc -ne 0 ]]; then
    row "$key" "$shown" "(unreadable)" DIFFERS
    differs=$((differs + 1))
  elif tt_matches "$op" "$wanted" "$current"; then
    row "$key" "$shown" "$current" OK
    ok=$((ok + 1))
  else
    row "$key" "$shown" "$current" DIFFERS
    differs=$((differs + 1))
  fi
done

if [[ -n "$TT_LIMITS" ]]; then
  nofile="$(tt_limits_nofile "$TT_LIMITS")"
  want_soft="${nofile% *}" want_hard="${nofile#* }"
  check_nofile() { # LABEL CURRENT WANTED
    if [[ "$2" == unlimited ]] || tt_num_ge "$2" "$3"; then
      row "$1" ">= $3" "$2" OK
      ok=$((ok + 1))
    else
      row "$1" ">= $3" "$2" DIFFERS
      differs=$((differs + 1))
    fi
  }
  check_nofile "nofile soft (ulimit -Sn, this shell)" "$(ulimit -Sn)" "$want_soft"
  check_nofile "nofile hard (ulimit -Hn, this shell)" "$(ulimit -Hn)" "$want_hard"
  echo "(nofile is checked for this shell; a systemd service's own limit: systemctl show -p LimitNOFILE UNIT)"
fi

echo "summary: $ok OK, $differs DIFFERS, $missing MISSING"
[[ $differs -eq 0 && $missing -eq 0 ]] && exit 0
exit 1
