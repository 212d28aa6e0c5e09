"""GPU ceilings (data) and roofline / speed-of-light maths (pure)."""
