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

# The EBS CSI driver's controller (a pod): a role of its own, which only its service account
# may assume through the issuer. It makes, changes and deletes only volumes tagged with the
# cluster (the driver tags what it makes: --k8s-tag-cluster-id), attaches them to instances, and
# uses the environment's KMS key only through EC2 (volumes encrypted with it).
locals {
  issuer_hostpath = replace(local.service_account_issuer, "https://", "")
  ebs_csi         = var.pod_identity && var.ebs_csi_driver
  volume_tag      = "kubernetes.io/cluster/${local.cluster_name}"
}

data "aws_iam_policy_document" "ebs_csi_trust" {
  count = local.ebs_csi ? 1 : 0

  statement {
    actions = ["sts:AssumeRoleWithWebIdentity"]
    principals {
      type        = "Federated"
      identifiers = [aws_iam_openid_connect_provider.pods[0].arn]
    }
    condition {
      test     = "StringEquals"
      variable = "${local.issuer_hostpath}:sub"
      values   = ["system:serviceaccount:kube-system:ebs-csi-controller-sa"]
    }
    condition {
      test     = "StringEquals"
      variable = "${local.issuer_hostpath}:aud"
      values   = ["sts.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "ebs_csi" {
  count              = local.ebs_csi ? 1 : 0
  name               = "${local.cluster_name}-ebs-csi"
  description        = "kubeplat ${var.environment}: the EBS CSI driver's controller (IRSA)"
  assume_role_policy = data.aws_iam_policy_document.ebs_csi_trust[0].json
  tags               = local.tags
}

data "aws_iam_policy_document" "ebs_csi" {
  count = local.ebs_csi ? 1 : 0

  statement {
    sid = "Describe"
    actions = [
      "ec2:DescribeAvailabilityZones",
      "ec2:DescribeInstances",
      "ec2:DescribeInstanceTypes",
      "ec2:DescribeSnapshots",
      "ec2:DescribeVolumes",
      "ec2:DescribeVolumesModifications",
      "ec2:DescribeVolumeStatus",
    ]
    resources = ["*"]
  }
  statement {
    sid       = "CreateClusterVolumes"
    actions   = ["ec2:CreateVolume"]
    resources = ["arn:${data.aws_partition.current.partition}:ec2:*:*:volume/*"]
    condition {
      test     = "StringEquals"
      variable = "aws:RequestTag/${local.volume_tag}"
      values   = ["owned"]
    }
  }
  statement {
    sid       = "TagOnCreation"
    actions   = ["ec2:CreateTags"]
    resources = ["arn:${data.aws_partition.current.partition}:ec2:*:*:volume/*"]
    condition {
      test     = "StringEquals"
      variable = "ec2:CreateAction"
      values   = ["CreateVolume"]
    }
  }
  statement {
    sid       = "ManageClusterVolumes"
    actions   = ["ec2:AttachVolume", "ec2:DetachVolume", "ec2:ModifyVolume", "ec2:DeleteVolume"]
    resources = ["arn:${data.aws_partition.current.partition}:ec2:*:*:volume/*"]
    condition {
      test     = "StringEquals"
      variable = "ec2:ResourceTag/${local.volume_tag}"
      values   = ["owned"]
    }
  }
  statement {
    sid       = "AttachToInstances"
    actions   = ["ec2:AttachVolume", "ec2:DetachVolume"]
    resources = ["arn:${data.aws_partition.current.partition}:ec2:*:*:instance/*"]
  }
  statement {
    sid = "EncryptWithTheEnvironmentsKey"
    actions = [
      "kms:Decrypt",
      "kms:DescribeKey",
      "kms:Encrypt",
      "kms:GenerateDataKeyWithoutPlaintext",
      "kms:ReEncryptFrom",
      "kms:ReEncryptTo",
    ]
    resources = [data.aws_kms_key.master.arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["ec2.${var.aws_region}.amazonaws.com"]
    }
  }
  statement {
    sid       = "GrantTheKeyToEBS"
    actions   = ["kms:CreateGrant"]
    resources = [data.aws_kms_key.master.arn]
    condition {
      test     = "Bool"
      variable = "kms:GrantIsForAWSResource"
      values   = ["true"]
    }
  }
}

resource "aws_iam_role_policy" "ebs_csi" {
  count  = local.ebs_csi ? 1 : 0
  name   = "ebs-csi"
  role   = aws_iam_role.ebs_csi[0].id
  policy = data.aws_iam_policy_document.ebs_csi[0].json
}
