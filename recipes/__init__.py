"""Recipes: how particular models are trained with the product stages (not part of the installed package)."""
