"""kubeplat: build and operate a Kubernetes platform on AWS by driving Terraform."""

__version__ = "0.1.0"
