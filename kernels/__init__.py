"""Compute kernels: fast implementations of hot ops, each with a pure-torch reference."""
