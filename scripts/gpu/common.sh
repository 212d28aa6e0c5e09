# Sourced by the scripts/gpu/*.sh drivers. One run folder /root/ptrun/NAME with a step log, packed into
# OUT/NAME.tgz on exit (a device call returns at most 8 files; $OUT is empty at every call, the run
# folder outlives a call while the machine stays warm), and an engine installed from its offline
# bundle with perftune importable beside it (skipped when a previous call on this machine did it):
#
#   source scripts/gpu/common.sh
#   gpu_run_setup ENGINE NAME STAGE PARTS OUT [CLEANUP]     # sets $r; CLEANUP runs before packing
#
# STAGE holds wheels/ (perftune's deps the host lacks, cp312), model/ and install-offline-bundle.sh;
# PARTS holds ENGINE.pNN + ENGINE.sha256.

log() { echo "[$(date +%T)] $*" | tee -a "$r/steps.log"; }
pt() { python3 -m perftune "$@"; }

gpu_finish() {
  if [ -n "$gpu_cleanup" ]; then eval "$gpu_cleanup"; fi
  tar czf "$gpu_out/$gpu_name.tgz" -C "$(dirname "$r")" "$gpu_name"
  log "packed"
}

gpu_run_setup() {
  local engine=$1 stage=$3 parts=$4
  gpu_name=$2; gpu_out=$5; gpu_cleanup=${6:-}
  r="${PT_RUN_ROOT:-/root/ptrun}/$gpu_name"; mkdir -p "$r"
  trap gpu_finish EXIT
  if [ -f "/tmp/perftune-offline/$engine/env.sh" ] && [ -d /tmp/ptdeps ]; then
    log "$engine already installed on this machine"
  else
    log "deps"; python3 -m pip install -q --no-index --no-deps --target /tmp/ptdeps "$stage"/wheels/*.whl
    log "$engine bundle"; bash "$stage/install-offline-bundle.sh" "$engine" "$parts" >> "$r/steps.log" 2>&1 || exit 1
  fi
  # shellcheck disable=SC1090
  source "/tmp/perftune-offline/$engine/env.sh"
  # The engine's bundled packages first: perftune's extra wheels only fill what is missing (the same
  # environment reaches the engine server perftune launches).
  export PYTHONPATH="$PYTHONPATH:$PWD/src:/tmp/ptdeps"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$r/gpu.txt"
}
