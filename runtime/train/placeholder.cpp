// Placeholder translation unit until the trainer lands.
