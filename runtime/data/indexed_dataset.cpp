// Placeholder translation unit until the data pipeline lands.
