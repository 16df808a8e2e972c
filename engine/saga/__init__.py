"""saga."""
