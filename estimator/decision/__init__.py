"""The decision: break-even formulas of the reference and the tuning algorithms zest weighs."""
