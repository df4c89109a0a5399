"""autarky: plan, train, export, serve, evaluate and route your own models."""

__version__ = "0.1.0"
