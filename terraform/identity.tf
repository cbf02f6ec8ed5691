# Pod roles without the node's role (IRSA). The API servers issue service-account tokens whose
# issuer is an HTTPS URL in a bucket of its own; kubeplat publishes the issuer's discovery
# document and keys there (only those are public) and the account trusts it as an OpenID
# Connect provider for STS (audience sts.amazonaws.com). A role's trust policy names
# oidc_provider_arn and conditions on "<issuer host/path>:sub" = system:serviceaccount:NS:NAME.
locals {
  oidc_bucket = var.oidc_bucket_name != "" ? var.oidc_bucket_name : "${var.secrets_bucket_name}-oidc"
  # Must equal what kubeplat gives the API servers (kubeplat/oidc.py: issuer).
  service_account_issuer = "https://${local.oidc_bucket}.s3.${var.aws_region}.amazonaws.com/${var.environment}"
}

resource "aws_iam_openid_connect_provider" "pods" {
  count = var.pod_identity ? 1 : 0

  url            = local.service_account_issuer
  client_id_list = ["sts.amazonaws.com"]
  # No thumbprint: STS checks the S3 endpoint's certificate against its own trusted CAs.
  tags = local.tags
}
