"""Products, categories, search, reviews."""
