"""Modeling: backbone (C3..C5) -> FPN (P3..P7) -> shared polar head, assembled by model.build_model."""
