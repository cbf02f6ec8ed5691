# Terraform and provider versions; the S3 backend is filled in by kubeplat (partial configuration).
terraform {
  required_version = ">= 1.5, < 2.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.60, < 7.0"
    }
  }

  backend "s3" {}
}

# The AWS provider: the environment's region and profile; every resource tagged.
# In the sandbox (an emulator on 127.0.0.1, given by AWS_ENDPOINT_URL) credential checks are skipped.
provider "aws" {
  region  = var.aws_region
  profile = var.aws_profile != "" ? var.aws_profile : null

  skip_credentials_validation = var.sandbox
  skip_metadata_api_check     = var.sandbox
  s3_use_path_style           = var.sandbox

  default_tags {
    tags = local.tags
  }
}
