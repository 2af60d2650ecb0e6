"""Pure functions on images and labels: centres, object measures, data properties, augmentation, normalisation, metrics."""
