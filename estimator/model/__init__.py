"""The Z_e model: the regressor, the local model built on it, and the model estimates use."""
