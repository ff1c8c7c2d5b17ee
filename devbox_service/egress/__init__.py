"""The guests' only ways out: the service's API and a filtering proxy to the internet."""
