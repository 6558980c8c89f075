"""factory: task spec -> sizing -> render -> bake -> register, for AWS Batch images."""

__version__ = "0.1.0"
