"""HTTP routes by resource; they translate requests and responses and nothing more."""
