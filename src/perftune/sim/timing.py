"""Step time of one continuous-batching step: roofline terms times calibrated efficiencies. Pure.

A step runs every scheduled token through the weights once (GEMMs: max of reading the weights and
the FLOPs of all tokens), decode attention reads each sequence's KV (memory-bound), prefill attention
is compute-bound and quadratic in the chunk's context, TP adds two all-reduces per layer, and each
step pays a fixed cost plus a cost per sequence. Without CUDA graphs every kernel is launched from the
CPU (eager_launch_ms); vLLM's FULL_AND_PIECEWISE graphs a decode-only batch whole and a mixed batch
in pieces around attention.

A MoE layer's routed experts are read only where the step's tokens were routed: with T tokens each
picking top_k of E experts (uniform routing), an expert is untouched with probability (1 - top_k/E)^T,
so a step reads E x (1 - (1 - top_k/E)^T) experts per MoE layer. At one token that is the active
parameters; a batch of 64 tokens on an 8-expert top-2 model reads every expert. The FLOPs stay per
token (each token runs its own top_k experts). With expert parallel (experts sharded whole across the
TP ranks) a MoE layer's MLP all-reduce is replaced by an all-to-all that sends each token's top_k
hidden vectors to the experts' ranks and back. A step that runs without CUDA graphs (more tokens than
the largest captured size, eager mode, or a FULL mode's mixed batch) launches its MoE layers op by op:
that host time overlaps the GPU's work, and only its excess over the GPU's time shows; with async
scheduling the CPU launches a step while the GPU still runs the one before, so a busy engine hides it
behind that step's GPU time too (Calibration.ungraphed_ahead), and only a step after an idle engine
(a lone prefill at c=1) pays it in full. The engine hands a step's tokens out only after it has
launched the next step, so a host-bound step holds back the tokens of the step before it by its
excess (`host_excess_s`, StepResult.held_s): in a burst of prefills the tokens come late, then together
(vLLM 0.26.0, H200, DeepSeek-V2-Lite c=16 640/16: 12 first tokens 60 ms after the first 2, the next
tokens 4 ms later; stamped at their steps' ends, the simulator had put 64 ms between them). A router that
reaches only a pool of the experts (Calibration.moe_expert_pool) fills it within a few tokens.

NVFP4 weights (`--quantization modelopt_fp4`) read 4.5 bits per weight and run their GEMMs on FP4 tensor
cores where the GPU has them (Blackwell), else at the bf16 rate (Hopper: 4-bit weights dequantized into
bf16 GEMMs); their two factors are priors until a measurement with NVFP4 weights is fitted.

FP8 weights have a factor per phase (the weight reads of decode, the GEMM FLOPs of prefill) and, like
the MoE layers, a host time per layer for steps that run without CUDA graphs (the activation
quantization and scaled matmuls launched one by one).
"""

from __future__ import annotations

from dataclasses import dataclass

from perftune.hardware.ceilings import Gpu
from perftune.hardware.roofline import ALLREDUCE_LATENCY_US
from perftune.models.card import WEIGHT_BYTES, ModelCard
from perftune.sim.calibration import Calibration
from perftune.sim.config import SimConfig


@dataclass(frozen=True, slots=True)
class StepModel:
    weight_read_s: float  # non-routed weights one GPU reads per step, at calibrated bandwidth
    flop_s_per_token: float  # GEMM time per token, at calibrated FLOPS
    kv_read_s_per_token: float  # decode attention: time to read one token of KV
    attn_s_per_pair: float  # prefill attention: time per (query, key) pair
    allreduce_s_per_token: float
    allreduce_fixed_s: float
    fixed_s: float
    per_seq_s: float
    eager_s: float
    piecewise_s: float
    mode: str
    graph_max_bs: int
    weight_bytes: float  # one GPU's weight bytes read per step (the profile's modelled bytes)
    kv_bytes_per_token: float  # one GPU's KV bytes per context token
    routed_read_s: float = 0.0  # reading every routed expert of every MoE layer once (0: dense)
    routed_bytes: float = 0.0  # one GPU's bytes of every routed expert
    route_share: float = 0.0  # top_k / experts: the share of experts one token touches
    route_spread: float = 1.0  # tokens routing independently (1) or together (0): Calibration
    expert_pool: float = 1.0  # share of the routed experts the router reaches: Calibration
    ungraphed_host_s: float = 0.0  # host time of the MoE layers (and FP8 layers) of a step run ungraphed
    ahead: float = 0.0  # share of the previous step's GPU time that can hide this step's host time

    @classmethod
    def build(cls, card: ModelCard, g: Gpu, cfg: SimConfig, cal: Calibration) -> StepModel:
        tp = cfg.tensor_parallel_size
        bpp = WEIGHT_BYTES[cfg.weight_dtype]
        fp8 = cfg.weight_dtype == "fp8"  # FP8 weights: one factor per phase (reads, FLOPs)
        read_eff, gemm_eff = {
            "fp8": (cal.fp8_weight_efficiency, cal.fp8_gemm),
            "nvfp4": (cal.nvfp4_weight_efficiency, cal.nvfp4_gemm_efficiency),
        }.get(cfg.weight_dtype, (1.0, 1.0))
        bw = g.hbm_tb_s * 1e12 * cal.hbm_efficiency * read_eff
        # NVFP4 runs on FP4 tensor cores where the GPU has them; elsewhere (Hopper) vLLM dequantizes the
        # 4-bit weights into bf16 GEMMs (Marlin): the reads shrink, the FLOP rate is bf16's
        gemm_dtype = "bf16" if cfg.weight_dtype == "nvfp4" and not g.native_fp4 else cfg.weight_dtype
        flops = g.peak_tflops(gemm_dtype) * 1e12 * cal.gemm_efficiency * gemm_eff
        attn_flops = g.peak_tflops("bf16") * 1e12 * cal.attn_efficiency
        kv_tok = card.kv_bytes_per_token[cfg.kv_dtype] / tp
        kv_bw = (
            g.hbm_tb_s * 1e12 * cal.hbm_efficiency * (cal.fp8_kv_efficiency if cfg.kv_dtype == "fp8" else 1.0)
        )
        # 2 matmuls (QK^T, PV) x 2 FLOPs x heads x head_dim per (query, key) pair, per attention layer.
        pair_flops = 4.0 * card.attention_layers * card.heads * card.head_dim / tp
        link = g.interconnect_gb_s / 2 * 1e9
        n_ar = 2 * card.layers
        # expert parallel: a MoE layer's MLP all-reduce becomes an all-to-all out to the experts' ranks
        # and back, top_k hidden vectors per token each way
        ep_layers = card.moe.moe_layers if card.moe and cfg.enable_expert_parallel and tp > 1 else 0
        a2a_per_token = (
            2 * (tp - 1) / tp * ep_layers * (card.moe.top_k if card.moe else 0) * card.hidden_size * 2.0
        )
        routed_params = card.params.routed_experts_active if card.moe else 0  # per token
        routed = card.params.routed_experts * bpp / tp if card.moe else 0.0
        routed_active = card.params.routed_experts_active * bpp / tp if card.moe else 0.0
        return cls(
            weight_read_s=(card.active_params * bpp / tp - routed_active) / bw,
            flop_s_per_token=2.0 * (card.active_params - routed_params) / tp / flops
            + 2.0 * routed_params / tp / (flops * cal.moe_gemm_efficiency),
            kv_read_s_per_token=kv_tok / kv_bw,
            attn_s_per_pair=pair_flops / attn_flops,
            allreduce_s_per_token=(
                (2 * (tp - 1) / tp * (n_ar - ep_layers) * card.hidden_size * 2.0 + a2a_per_token) / link
            )
            if tp > 1
            else 0.0,
            allreduce_fixed_s=(n_ar + ep_layers) * ALLREDUCE_LATENCY_US * 1e-6 if tp > 1 else 0.0,
            fixed_s=cal.step_overhead_ms * 1e-3
            + (card.moe.moe_layers * cal.moe_layer_overhead_us * 1e-6 if card.moe else 0.0),
            per_seq_s=cal.per_seq_overhead_us * 1e-6,
            eager_s=cal.eager_launch_ms * 1e-3,
            piecewise_s=cal.piecewise_launch_ms * 1e-3,
            mode=cfg.cudagraph_mode,
            graph_max_bs=cfg.max_cudagraph_capture_size,
            weight_bytes=card.active_params * bpp / tp - routed_active,
            kv_bytes_per_token=kv_tok,
            routed_read_s=routed / bw,
            routed_bytes=routed,
            route_share=card.moe.top_k / card.moe.experts if card.moe and card.moe.experts else 0.0,
            route_spread=cal.moe_routing_spread,
            expert_pool=max(cal.moe_expert_pool, card.moe.top_k / card.moe.experts)
            if card.moe and card.moe.experts
            else 1.0,
            ungraphed_host_s=(card.moe.moe_layers * cal.moe_ungraphed_layer_us if card.moe else 0.0) * 1e-6
            + card.layers * (cal.fp8_ungraphed_layer_us if fp8 else 0.0) * 1e-6,
            ahead=cal.ungraphed_ahead if cfg.async_scheduling else 0.0,
        )

    def experts_touched(self, tokens: int) -> float:
        """Expected share of a MoE layer's routed experts a step of `tokens` tokens reads."""
        if self.route_share <= 0.0 or tokens <= 0:
            return 0.0
        independent = 1.0 + self.route_spread * (tokens - 1)
        # a token picks top_k of the pool's experts: the pool fills fast, then stops growing
        return float(self.expert_pool * (1.0 - (1.0 - self.route_share / self.expert_pool) ** independent))

    def weight_bytes_at(self, tokens: int) -> float:
        """One GPU's weight bytes read by a step of `tokens` tokens (MoE: the routed experts touched)."""
        return self.weight_bytes + self.routed_bytes * self.experts_touched(tokens)

    def launch_s(self, decode_only: bool, tokens: int) -> float:
        """CPU launch cost not hidden by CUDA graphs, per vLLM cudagraph_mode."""
        if self.mode == "NONE":
            return self.eager_s
        if tokens > self.graph_max_bs:
            # Beyond the largest captured size nothing is graphed, but kernels are long enough that
            # launches mostly overlap GPU work; what stays exposed is about the piecewise cost.
            return self.piecewise_s
        if decode_only and self.mode != "PIECEWISE":
            return 0.0
        if self.mode in ("PIECEWISE", "FULL_AND_PIECEWISE"):
            return self.piecewise_s
        return self.eager_s  # FULL / FULL_DECODE_ONLY run mixed batches eagerly

    def graphed(self, decode_only: bool, tokens: int) -> bool:
        """Whether the step's MoE layers run inside captured CUDA graphs (whole, or in the pieces
        around attention), per vLLM cudagraph_mode and the largest captured size."""
        if self.mode == "NONE" or tokens > self.graph_max_bs:
            return False
        # a decode-only batch is graphed whole or in pieces; FULL / FULL_DECODE_ONLY run mixed ones eagerly
        return decode_only or self.mode in ("PIECEWISE", "FULL_AND_PIECEWISE")

    def parts(
        self,
        n_seqs: int,
        tokens: int,
        decode_kv_tokens: int,
        prefill_pairs: float,
        decode_only: bool,
        free_s: float = 0.0,
    ) -> tuple[float, float, float, float]:
        """(GEMM, attention, communication, host overhead) seconds of one step; see `step_s`.
        `free_s`: GPU time of the step before, with the engine busy, left free of its own host work
        (`free_after`); with async scheduling the CPU launches this step's ops during it."""
        read = self.weight_read_s + self.routed_read_s * self.experts_touched(tokens)
        gemm = max(read, self.flop_s_per_token * tokens)
        attn = decode_kv_tokens * self.kv_read_s_per_token + prefill_pairs * self.attn_s_per_pair
        comm = self.allreduce_fixed_s + self.allreduce_s_per_token * tokens
        host = self.fixed_s + self.per_seq_s * n_seqs + self.launch_s(decode_only, tokens)
        host += self.host_excess_s(gemm + attn + comm, decode_only, tokens, free_s)
        return gemm, attn, comm, host

    def host_excess_s(self, gpu_s: float, decode_only: bool, tokens: int, free_s: float = 0.0) -> float:
        """Launched op by op, an ungraphed step's MoE (or FP8) layers' host work overlaps the GPU's (this
        step's, and the previous step's where the CPU could run ahead): only the excess shows."""
        if self.ungraphed_host_s <= 0.0 or self.graphed(decode_only, tokens):
            return 0.0
        return max(0.0, self.ungraphed_host_s - gpu_s - self.ahead * free_s)

    def free_after(self, parts: tuple[float, float, float, float], decode_only: bool, tokens: int) -> float:
        """GPU seconds of a step (its `parts`) during which the CPU is free to launch the next one:
        all of it, less what an ungraphed step's own op-by-op launches took."""
        gpu = parts[0] + parts[1] + parts[2]
        own = self.ungraphed_host_s if not self.graphed(decode_only, tokens) else 0.0
        return max(0.0, gpu - own)

    def step_s(
        self, n_seqs: int, tokens: int, decode_kv_tokens: int, prefill_pairs: float, decode_only: bool
    ) -> float:
        """Seconds for one step: `tokens` scheduled over `n_seqs` sequences; decode sequences read
        `decode_kv_tokens` of KV in all; prefill chunks attend over `prefill_pairs` (query, key) pairs."""
        return sum(self.parts(n_seqs, tokens, decode_kv_tokens, prefill_pairs, decode_only))
