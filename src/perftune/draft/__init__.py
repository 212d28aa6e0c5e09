"""Phase 6: training a speculative-decoding draft head (EAGLE-3) as a submitted, resumable job."""
