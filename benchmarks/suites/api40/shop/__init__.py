"""A small shop API: products, customers, nested orders and lines, a billing service."""
