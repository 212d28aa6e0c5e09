"""Phase 4, quantize: families, schemes, real-library backends, and the coverage gate on the output."""

from perftune.quant.backends import BACKENDS, Backend, QuantJob, backend_for
from perftune.quant.coverage import CoverageReport, GateResult, check_checkpoint, check_gguf, coverage_of
from perftune.quant.families import Family, family_for, load_families
from perftune.quant.schemes import SCHEMES, Scheme, scheme_for

__all__ = [
    "BACKENDS",
    "SCHEMES",
    "Backend",
    "CoverageReport",
    "Family",
    "GateResult",
    "QuantJob",
    "Scheme",
    "backend_for",
    "check_checkpoint",
    "check_gguf",
    "coverage_of",
    "family_for",
    "load_families",
    "scheme_for",
]
