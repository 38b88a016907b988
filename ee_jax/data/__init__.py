"""Data contract, dataset building/opening, and the host input pipeline."""
