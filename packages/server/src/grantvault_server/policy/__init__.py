"""Policy evaluation: the one seam every credential use passes through."""
