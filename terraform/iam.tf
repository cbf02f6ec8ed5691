# The KMS key of the environment (id, ARN or alias), for the node roles' kms:Decrypt.
data "aws_kms_key" "master" {
  key_id = var.kms_master_id
}

locals {
  bucket_arn = "arn:aws:s3:::${var.secrets_bucket_name}"
  # What each layer may read: its configuration, the common CA certificates, its own PKI and
  # its manifests. Nothing else; pki/locked/ is denied outright.
  readable = {
    for layer in local.layers : layer => [
      "${var.environment}/cloudconfig/${local.cloudconfig[layer]}",
      "${var.environment}/pki/common/*",
      "${var.environment}/pki/${layer}/*",
      "${var.environment}/manifests/${layer}/*",
    ]
  }
}

# Nodes assume their layer's role through EC2.
data "aws_iam_policy_document" "assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

# One role per layer.
resource "aws_iam_role" "node" {
  for_each           = toset(local.layers)
  name               = "${local.name}-${each.key}"
  assume_role_policy = data.aws_iam_policy_document.assume.json

  tags = { Layer = each.key }
}

# Each layer's permissions: decrypt with the key, read its own prefixes, never pki/locked/.
data "aws_iam_policy_document" "node" {
  for_each = toset(local.layers)

  statement {
    sid       = "Decrypt"
    actions   = ["kms:Decrypt"]
    resources = [data.aws_kms_key.master.arn]
  }

  statement {
    sid       = "ReadOwnObjects"
    actions   = ["s3:GetObject"]
    resources = [for p in local.readable[each.key] : "${local.bucket_arn}/${p}"]
  }

  statement {
    sid       = "ReadOwnConfigurationVersions"
    actions   = ["s3:GetObjectVersion"]
    resources = ["${local.bucket_arn}/${var.environment}/cloudconfig/${local.cloudconfig[each.key]}"]
  }

  statement {
    sid       = "ListOwnConfigurationVersions"
    actions   = ["s3:ListBucketVersions"]
    resources = [local.bucket_arn]
    condition {
      test     = "StringEquals"
      variable = "s3:prefix"
      values   = ["${var.environment}/cloudconfig/${local.cloudconfig[each.key]}"]
    }
  }

  statement {
    sid       = "ListOwnPrefixes"
    actions   = ["s3:ListBucket"]
    resources = [local.bucket_arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = local.readable[each.key]
    }
  }

  statement {
    sid       = "NeverLocked"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = ["${local.bucket_arn}/${var.environment}/pki/locked/*"]
  }

  dynamic "statement" {
    # etcd members find each other through the EC2 and Auto Scaling APIs (read-only calls that
    # support no resource-level restriction).
    for_each = each.key == "secure" ? [1] : []
    content {
      sid = "EtcdDiscovery"
      actions = [
        "ec2:DescribeInstances",
        "autoscaling:DescribeAutoScalingInstances",
        "autoscaling:DescribeAutoScalingGroups",
      ]
      resources = ["*"]
    }
  }
}

# The policy above, attached to the layer's role.
resource "aws_iam_role_policy" "node" {
  for_each = toset(local.layers)
  name     = "${local.name}-${each.key}"
  role     = aws_iam_role.node[each.key].id
  policy   = data.aws_iam_policy_document.node[each.key].json
}

# The instance profile the launch templates use.
resource "aws_iam_instance_profile" "node" {
  for_each = toset(local.layers)
  name     = "${local.name}-${each.key}"
  role     = aws_iam_role.node[each.key].name
}
