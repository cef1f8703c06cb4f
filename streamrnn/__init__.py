"""streamrnn: stateful recurrent forecasts for reactor streams."""

__version__ = "0.1.0"
