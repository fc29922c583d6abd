"""rjn: a Jupyter notebook on a remote machine, as easy as on your laptop."""

__version__ = "0.1.0"
