"""The `optimize` step: search prune sparsity, distill, quantize, and keep the best model that meets a target."""
