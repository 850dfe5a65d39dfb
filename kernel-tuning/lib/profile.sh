# shellcheck shell=bash
# shellcheck disable=SC2034  # TT_* variables are read by the scripts that source this file
# Shared by apply.sh and check.sh: profile lookup, parsing and validation, reading /proc/sys,
# comparing values. Sourced, never run. Every function is read-only.
#
# Profile format (one item per line; see kernel-tuning/README.md):
#   # comment                 (also `;`; whole lines only, never after a value)
#   key = value               exact: every whitespace-separated field must match
#   key >= value              at least: one non-negative integer, a higher current value is fine
#   @limits = FILE            limits file under kernel-tuning/limits/ (its nofile is checked)
#   @systemd = DIR            drop-in directory under kernel-tuning/systemd/ (gateway only)

TT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TT_PROG="$(basename "$0")"
# Where current values are read from. TERN_TUNING_PROC_SYS points check.sh (and apply.sh
# --dry-run) at a fake tree for the tests; apply.sh refuses it when it would really apply.
TT_PROC_SYS="${TERN_TUNING_PROC_SYS:-/proc/sys}"

TT_KEYS=()
TT_OPS=()
TT_VALUES=()
TT_LIMITS=""
TT_SYSTEMD=""
TT_PROFILE_FILE=""
TT_PROFILE_NAME=""

tt_usage_error() {
  echo "$TT_PROG: error: $*" >&2
  exit 2
}

# tt_resolve_profile NAME_OR_PATH: a bare name means kernel-tuning/profiles/NAME.conf; anything
# with a slash (or an existing file) is used as a path.
tt_resolve_profile() {
  local arg="$1"
  if [[ "$arg" == */* || -f "$arg" ]]; then
    TT_PROFILE_FILE="$arg"
  else
    TT_PROFILE_FILE="$TT_DIR/profiles/$arg.conf"
  fi
  if [[ ! -f "$TT_PROFILE_FILE" ]]; then
    local known="" f
    for f in "$TT_DIR"/profiles/*.conf; do
      if [[ -e "$f" ]]; then
        f="${f##*/}"
        known+="${f%.conf} "
      fi
    done
    tt_usage_error "profile '$arg' not found ($TT_PROFILE_FILE); known profiles: ${known:-none}"
  fi
  TT_PROFILE_NAME="$(basename "$TT_PROFILE_FILE")"
  TT_PROFILE_NAME="${TT_PROFILE_NAME%.conf}"
  if [[ ! "$TT_PROFILE_NAME" =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]]; then
    tt_usage_error "profile name '$TT_PROFILE_NAME' must be letters, digits, '.', '_' or '-'"
  fi
}

# tt_parse_profile: fills TT_KEYS / TT_OPS / TT_VALUES (values with single spaces), TT_LIMITS and
# TT_SYSTEMD from TT_PROFILE_FILE. Any syntax error exits 2 naming the file and line.
tt_parse_profile() {
  local file="$TT_PROFILE_FILE" line n=0 key op value tok
  local -A seen=()
  local -a toks
  while IFS= read -r line || [[ -n "$line" ]]; do
    n=$((n + 1))
    line="${line%$'\r'}"
    # Trim leading and trailing blanks.
    line="${line#"${line%%[![:space:]]*}"}"
    line="${line%"${line##*[![:space:]]}"}"
    [[ -z "$line" || "$line" == \#* || "$line" == \;* ]] && continue
    local where="$file:$n"
    if [[ "$line" =~ ^@([a-z]+)[[:space:]]*=[[:space:]]*([^[:space:]]+)$ ]]; then
      key="${BASH_REMATCH[1]}"
      value="${BASH_REMATCH[2]}"
      [[ "$value" =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] ||
        tt_usage_error "$where: bad file name in directive: $line"
      case "$key" in
        limits)
          [[ -f "$TT_DIR/limits/$value" ]] ||
            tt_usage_error "$where: @limits names a missing file kernel-tuning/limits/$value"
          TT_LIMITS="$TT_DIR/limits/$value"
          ;;
        systemd)
          [[ -d "$TT_DIR/systemd/$value" ]] ||
            tt_usage_error "$where: @systemd names a missing directory kernel-tuning/systemd/$value"
          TT_SYSTEMD="$TT_DIR/systemd/$value"
          ;;
        *) tt_usage_error "$where: unknown directive @$key (known: @limits, @systemd)" ;;
      esac
      continue
    fi
    if [[ ! "$line" =~ ^([^[:space:]=\>\<]+)[[:space:]]*(\>=|=)[[:space:]]*(.*)$ ]]; then
      tt_usage_error "$where: expected 'key = value' or 'key >= value', got: $line"
    fi
    key="${BASH_REMATCH[1]}"
    op="${BASH_REMATCH[2]}"
    value="${BASH_REMATCH[3]}"
    if [[ ! "$key" =~ ^[a-z][a-z0-9_]*(\.[A-Za-z0-9_-]+)+$ ]]; then
      tt_usage_error "$where: bad sysctl key '$key' (dotted, like net.core.somaxconn): $line"
    fi
    [[ -n "$value" ]] || tt_usage_error "$where: no value for $key: $line"
    read -r -a toks <<<"$value"
    for tok in "${toks[@]}"; do
      [[ "$tok" =~ ^[A-Za-z0-9_.:-]+$ ]] ||
        tt_usage_error "$where: bad value field '$tok' for $key (comments go on their own line): $line"
    done
    value="${toks[*]}"
    if [[ "$op" == ">=" && ! "$value" =~ ^[0-9]+$ ]]; then
      tt_usage_error "$where: '>=' needs a single non-negative integer, got '$value' for $key"
    fi
    [[ -z "${seen[$key]:-}" ]] ||
      tt_usage_error "$where: duplicate key $key (first on line ${seen[$key]})"
    seen[$key]=$n
    TT_KEYS+=("$key")
    TT_OPS+=("$op")
    TT_VALUES+=("$value")
  done <"$file"
  [[ ${#TT_KEYS[@]} -gt 0 ]] || tt_usage_error "$file: no 'key = value' lines"
}

tt_proc_path() {
  echo "$TT_PROC_SYS/${1//.//}"
}

# tt_read_current KEY: prints the current value with single spaces. Returns 1 when the key is
# absent on this kernel, 2 when it exists but cannot be read.
tt_read_current() {
  local path raw
  path="$(tt_proc_path "$1")"
  [[ -e "$path" ]] || return 1
  raw="$(cat -- "$path" 2>/dev/null)" || return 2
  local -a f
  read -r -a f <<<"$raw"
  echo "${f[*]}"
}

# tt_num_ge A B: true when the non-negative integer A >= B (any length, no bash overflow).
tt_num_ge() {
  local a="$1" b="$2"
  a="${a#"${a%%[!0]*}"}"
  b="${b#"${b%%[!0]*}"}"
  if [[ ${#a} -ne ${#b} ]]; then
    [[ ${#a} -gt ${#b} ]]
  else
    [[ "$a" == "$b" || "$a" > "$b" ]]
  fi
}

# tt_matches OP WANTED CURRENT: `>=` compares one integer; `=` compares every field, numerically
# when both are integers.
tt_matches() {
  local op="$1" wanted="$2" current="$3" i
  if [[ "$op" == ">=" ]]; then
    [[ "$current" =~ ^[0-9]+$ ]] && tt_num_ge "$current" "$wanted"
    return
  fi
  local -a w c
  read -r -a w <<<"$wanted"
  read -r -a c <<<"$current"
  [[ ${#w[@]} -eq ${#c[@]} ]] || return 1
  for i in "${!w[@]}"; do
    if [[ "${w[$i]}" =~ ^[0-9]+$ && "${c[$i]}" =~ ^[0-9]+$ ]]; then
      tt_num_ge "${w[$i]}" "${c[$i]}" && tt_num_ge "${c[$i]}" "${w[$i]}" || return 1
    else
      [[ "${w[$i]}" == "${c[$i]}" ]] || return 1
    fi
  done
}

# tt_limits_nofile FILE: prints "SOFT HARD" from the nofile lines of a limits.d file (`-` sets
# both). Exits 2 when the file has no nofile line or a malformed one.
tt_limits_nofile() {
  local file="$1" line n=0 soft="" hard="" domain type item value
  while IFS= read -r line || [[ -n "$line" ]]; do
    n=$((n + 1))
    line="${line%%#*}"
    read -r domain type item value _ <<<"$line" || true
    [[ -z "${domain:-}" || "${item:-}" != "nofile" ]] && continue
    [[ "${value:-}" =~ ^[0-9]+$ ]] || tt_usage_error "$file:$n: nofile needs an integer value"
    case "$type" in
      soft) soft="$value" ;;
      hard) hard="$value" ;;
      -) soft="$value" hard="$value" ;;
      *) tt_usage_error "$file:$n: type must be soft, hard or -" ;;
    esac
  done <"$file"
  [[ -n "$soft" && -n "$hard" ]] || tt_usage_error "$file: needs a soft and a hard nofile line"
  echo "$soft $hard"
}
