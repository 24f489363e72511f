"""Training: one engine, recipes as objectives (label smoothing, AdvProp, distillation)."""
