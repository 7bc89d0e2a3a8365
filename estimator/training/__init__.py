"""Training and evaluation of the Z_e model: measured rows, grouped evaluation, recorded studies."""
