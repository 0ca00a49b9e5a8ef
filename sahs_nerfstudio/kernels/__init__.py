"""Compiled CPU kernels, each beside the plain torch function it must equal (its reference)."""
