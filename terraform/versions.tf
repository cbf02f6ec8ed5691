# Terraform and provider versions; the S3 backend is filled in by kubeplat (partial configuration).
terraform {
  required_version = ">= 1.5"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.60, < 7.0"
    }
  }

  backend "s3" {}
}
