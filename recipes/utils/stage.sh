# Shared helpers for recipes/*/run.sh (sourced, not executed).
#   parse options:  --stage N --stop-stage N --force  and  --name value  for any variable already set
#   run_stage N NAME : true when stage N is in [stage, stop_stage] and not done (or --force)
#   mark_done NAME [SECONDS] : writes $exp/.done/NAME (icefall-style marker) so a rerun skips the stage;
#                      its second line is the stage's wall seconds (default: since run_stage started it)
#   after N:NAME...  : fails naming the stage when stage N (NAME) has no marker yet
#   log_run CMD...   : prints the exact command, appends it to $exp/commands.log, runs it
#   need PATH...     : fails with a clear message when an input of the stage is missing
#   start_beside LOG CMD... : runs CMD in the background (output to LOG), killed if the script exits first
#   wait_beside WHAT LOG    : waits for it; fails naming WHAT and LOG

force=${force:-false}
while [ $# -gt 0 ]; do
  case "$1" in
    --force) force=true; shift ;;
    --help|-h) sed -n '2,/^set -/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; exit 0 ;;
    --*=*) opt=${1%%=*}; opt=${opt#--}; opt=${opt//-/_}; val=${1#*=}
           if [ -z "${!opt+x}" ]; then echo "$0: unknown option --${opt//_/-}" >&2; exit 2; fi
           printf -v "$opt" '%s' "$val"; shift ;;
    --*) opt=${1#--}; opt=${opt//-/_}
         if [ -z "${!opt+x}" ]; then echo "$0: unknown option $1" >&2; exit 2; fi
         [ $# -ge 2 ] || { echo "$0: option $1 needs a value" >&2; exit 2; }
         printf -v "$opt" '%s' "$2"; shift 2 ;;
    *) echo "$0: unexpected argument $1" >&2; exit 2 ;;
  esac
done

log() { echo "[$(date '+%F %T')] $*" >&2; }

run_stage() {
  local n=$1 name=$2
  [ "$n" -ge "$stage" ] && [ "$n" -le "$stop_stage" ] || return 1
  if [ "$force" != true ] && [ -f "$exp/.done/$name" ]; then
    log "stage $n ($name): done before, skipping (delete $exp/.done/$name or pass --force to redo)"
    return 1
  fi
  log "stage $n ($name)"
  stage_t0=$SECONDS
  return 0
}

mark_done() {
  mkdir -p "$exp/.done"
  printf '%s\nseconds %s\n' "$(date -u '+%FT%TZ')" "${2:-$((SECONDS - ${stage_t0:-0}))}" > "$exp/.done/$1"
}

after() {
  local dep
  for dep in "$@"; do
    [ -f "$exp/.done/${dep#*:}" ] || { echo "$0: stage ${dep%%:*} (${dep#*:}) has not run in $exp (no $exp/.done/${dep#*:}); run it first: $0 --stage ${dep%%:*}" >&2; exit 1; }
  done
}

log_run() {
  mkdir -p "$exp"
  echo "$*" >> "$exp/commands.log"
  log "+ $*"
  "$@"
}

need() {
  local p
  for p in "$@"; do
    [ -e "$p" ] || { echo "$0: stage input $p is missing — run the earlier stage first (see --stage)" >&2; exit 1; }
  done
}

start_beside() {
  local log=$1; shift
  "$@" > "$log" 2>&1 &
  beside_pid=$!
  trap 'kill $beside_pid 2>/dev/null || true' EXIT
}

wait_beside() {
  wait "$beside_pid" || { echo "$0: $1 failed; see $2" >&2; exit 1; }
  trap - EXIT
}
