"""Data: robust image decoding, dataset layouts, caching, augmentation, synthetic data."""
