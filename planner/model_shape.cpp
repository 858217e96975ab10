// Placeholder translation unit until the planner lands.
