"""The Z_e model's data: shipped in the wheel as the package ``zest_models`` (see pyproject.toml)."""
