"""Outputs of a decision: the JSON document, the table and the break-even chart."""
