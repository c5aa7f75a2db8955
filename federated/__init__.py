"""Barnraise federated-learning core: recipes, training, codec, signatures, strategies."""
