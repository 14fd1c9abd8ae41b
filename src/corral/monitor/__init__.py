"""Resource sampling of service process trees."""
