"""Reading satellite products onto one pixel grid, shared by the builders and scene inference."""
