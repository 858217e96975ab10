// Placeholder translation unit until the model lands.
