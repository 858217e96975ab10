// Placeholder translation unit until the communicator lands.
