"""Ferret under Flower's SecAgg+ (ferret_kernels.fl.flower.secagg)."""
