"""Serving: SavedModel export, fill-mask."""
