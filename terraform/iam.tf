# The KMS key of the environment (id, ARN or alias), for the node roles' kms:Decrypt.
data "aws_kms_key" "master" {
  key_id = var.kms_master_id
}

# The account and partition, for the ARNs of the environment's own autoscaling groups.
data "aws_caller_identity" "current" {}

# The partition (aws, aws-cn, aws-us-gov) the account is in.
data "aws_partition" "current" {}

locals {
  bucket_arn = "arn:${data.aws_partition.current.partition}:s3:::${var.secrets_bucket_name}"
  # The secure layer's etcd objects in the secrets bucket: the members' formation record, read
  # by every member and written once (a conditional put) by the first that forms the cluster;
  # an operator's backup request, and the leader's answer; the snapshot an operator restores
  # from (a copy, under etcd/restore/); and what exists under etcd/ (without s3:ListBucket, S3
  # answers a missing object with 403). The leader's snapshots and their retention: nodes
  # never read them back.
  etcd_statements = {
    EtcdFormationRecord = {
      actions = ["s3:GetObject", "s3:PutObject"]
      resources = [
        "${local.bucket_arn}/${var.environment}/etcd/formation.json",
        "${local.bucket_arn}/${var.environment}/etcd/backup-done.json",
      ]
      prefix = null
    }
    ReadEtcdRequests = {
      actions = ["s3:GetObject"]
      resources = [
        "${local.bucket_arn}/${var.environment}/etcd/backup-request.json",
        "${local.bucket_arn}/${var.environment}/etcd/restore/*",
      ]
      prefix = null
    }
    FindEtcdObjects = {
      actions   = ["s3:ListBucket"]
      resources = [local.bucket_arn]
      prefix    = "${var.environment}/etcd/*"
    }
    WriteEtcdSnapshots = {
      actions   = ["s3:PutObject", "s3:DeleteObject"]
      resources = ["${local.bucket_arn}/${var.environment}/etcd-backups/*"]
      prefix    = null
    }
    ListEtcdSnapshots = {
      actions   = ["s3:ListBucket"]
      resources = [local.bucket_arn]
      prefix    = "${var.environment}/etcd-backups/"
    }
  }
  # The AWS cloud controller manager runs on the control plane (host network) with the API
  # layer's role. Upstream's documented policy (cloud-provider-aws docs/prerequisites.md) less
  # the EBS volume actions (the EBS CSI driver has its own role) and the route actions (no cloud
  # routes: the pod network is flannel's): reads anywhere; load balancers, target groups and
  # security groups made in this account and region (they are tagged with the cluster when
  # made); the security groups and instances it changes, and the load balancers it deletes,
  # only when they carry the cluster's tag; Elastic Load Balancing's service role only.
  no_condition = { test = "", variable = "", values = [] }
  # What the cloud controller manager may change: this account's EC2 and load balancing objects
  # in this region (the describe calls support no resource-level restriction).
  ccm_resources = [
    "arn:${data.aws_partition.current.partition}:ec2:${var.aws_region}:${data.aws_caller_identity.current.account_id}:*",
    "arn:${data.aws_partition.current.partition}:elasticloadbalancing:${var.aws_region}:${data.aws_caller_identity.current.account_id}:*",
  ]
  ccm_statements = {
    CloudControllerRead = {
      actions = [
        "autoscaling:DescribeAutoScalingGroups",
        "autoscaling:DescribeTags",
        "ec2:DescribeAvailabilityZones",
        "ec2:DescribeInstances",
        "ec2:DescribeInstanceTopology",
        "ec2:DescribeRegions",
        "ec2:DescribeRouteTables",
        "ec2:DescribeSecurityGroups",
        "ec2:DescribeSubnets",
        "ec2:DescribeVpcs",
        "elasticloadbalancing:DescribeListeners",
        "elasticloadbalancing:DescribeLoadBalancerAttributes",
        "elasticloadbalancing:DescribeLoadBalancerPolicies",
        "elasticloadbalancing:DescribeLoadBalancers",
        "elasticloadbalancing:DescribeTargetGroups",
        "elasticloadbalancing:DescribeTargetHealth",
      ]
      resources = ["*"]
      condition = local.no_condition
    }
    CloudControllerMake = {
      actions = [
        "ec2:CreateSecurityGroup",
        "ec2:CreateTags",
        "elasticloadbalancing:AddTags",
        "elasticloadbalancing:AttachLoadBalancerToSubnets",
        "elasticloadbalancing:ApplySecurityGroupsToLoadBalancer",
        "elasticloadbalancing:ConfigureHealthCheck",
        "elasticloadbalancing:CreateListener",
        "elasticloadbalancing:CreateLoadBalancer",
        "elasticloadbalancing:CreateLoadBalancerListeners",
        "elasticloadbalancing:CreateLoadBalancerPolicy",
        "elasticloadbalancing:CreateTargetGroup",
        "elasticloadbalancing:DeleteListener",
        "elasticloadbalancing:DeleteLoadBalancerListeners",
        "elasticloadbalancing:DeleteTargetGroup",
        "elasticloadbalancing:DeregisterInstancesFromLoadBalancer",
        "elasticloadbalancing:DeregisterTargets",
        "elasticloadbalancing:DetachLoadBalancerFromSubnets",
        "elasticloadbalancing:ModifyListener",
        "elasticloadbalancing:ModifyLoadBalancerAttributes",
        "elasticloadbalancing:ModifyTargetGroup",
        "elasticloadbalancing:RegisterInstancesWithLoadBalancer",
        "elasticloadbalancing:RegisterTargets",
        "elasticloadbalancing:SetLoadBalancerPoliciesForBackendServer",
        "elasticloadbalancing:SetLoadBalancerPoliciesOfListener",
        "elasticloadbalancing:SetSecurityGroups",
      ]
      resources = local.ccm_resources
      condition = local.no_condition
    }
    CloudControllerChangeTagged = {
      actions = [
        "ec2:AuthorizeSecurityGroupIngress",
        "ec2:DeleteSecurityGroup",
        "ec2:ModifyInstanceAttribute",
        "ec2:RevokeSecurityGroupIngress",
        "elasticloadbalancing:DeleteLoadBalancer",
      ]
      resources = local.ccm_resources
      condition = {
        test     = "StringEquals"
        variable = "aws:ResourceTag/kubernetes.io/cluster/${local.cluster_name}"
        values   = ["owned", "shared"]
      }
    }
    CloudControllerLinkedRole = {
      # The first load balancer of an account makes Elastic Load Balancing's service role.
      actions   = ["iam:CreateServiceLinkedRole"]
      resources = ["arn:${data.aws_partition.current.partition}:iam::${data.aws_caller_identity.current.account_id}:role/aws-service-role/elasticloadbalancing.amazonaws.com/AWSServiceRoleForElasticLoadBalancing"]
      condition = {
        test     = "StringEquals"
        variable = "iam:AWSServiceName"
        values   = ["elasticloadbalancing.amazonaws.com"]
      }
    }
  }

  # What each layer may read: its configuration, the common CA certificates, its own PKI, its
  # manifests and its nodes' status reports. Nothing else; pki/locked/ is denied outright.
  readable = {
    for layer in local.layers : layer => [
      "${var.environment}/cloudconfig/${local.cloudconfig[layer]}",
      "${var.environment}/pki/common/*",
      "${var.environment}/pki/${layer}/*",
      "${var.environment}/manifests/${layer}/*",
      "${var.environment}/status/${layer}/*",
    ]
  }
  # An artifact mirror in S3 (s3://bucket/prefix): every node reads the binaries from it.
  mirror_s3   = startswith(var.artifact_mirror, "s3://") ? trimsuffix(trimprefix(var.artifact_mirror, "s3://"), "/") : ""
  mirror_arns = local.mirror_s3 == "" ? [] : ["arn:${data.aws_partition.current.partition}:s3:::${local.mirror_s3}/*"]
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
    # Only through S3, and only for what this layer may read: its objects (each SSE-KMS object
    # has its ARN as encryption context, or the bucket's with an S3 Bucket Key) and the
    # artifact mirror's. Never a ciphertext handed to KMS directly.
    sid       = "Decrypt"
    actions   = ["kms:Decrypt"]
    resources = [data.aws_kms_key.master.arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["s3.${var.aws_region}.amazonaws.com"]
    }
    condition {
      test     = "StringLike"
      variable = "kms:EncryptionContext:aws:s3:arn"
      values = concat(
        [local.bucket_arn],
        [for p in local.readable[each.key] : "${local.bucket_arn}/${p}"],
        # The etcd members' record, requests and restore copy; snapshots (a multipart upload
        # decrypts its parts).
        each.key == "secure" ? ["${local.bucket_arn}/${var.environment}/etcd/*", "${local.bucket_arn}/${var.environment}/etcd-backups/*"] : [],
        local.mirror_arns,
        [for arn in local.mirror_arns : split("/", arn)[0]],
      )
    }
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
    sid       = "ReportStatus"
    actions   = ["s3:PutObject"]
    resources = ["${local.bucket_arn}/${var.environment}/status/${each.key}/*"]
  }

  statement {
    # Status reports are encrypted with the bucket's key (through S3, for this bucket only).
    sid       = "EncryptStatus"
    actions   = ["kms:GenerateDataKey"]
    resources = [data.aws_kms_key.master.arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["s3.${var.aws_region}.amazonaws.com"]
    }
    condition {
      test     = "StringLike"
      variable = "kms:EncryptionContext:aws:s3:arn"
      values   = [local.bucket_arn, "${local.bucket_arn}/${var.environment}/status/${each.key}/*"]
    }
  }

  statement {
    # A node whose bootstrap cannot finish asks its own group to replace it (capped on the node);
    # a secure node tells its group it has joined etcd (the launch hook, terraform/nodes.tf).
    sid       = "ReportToTheGroup"
    actions   = each.key == "secure" ? ["autoscaling:SetInstanceHealth", "autoscaling:CompleteLifecycleAction"] : ["autoscaling:SetInstanceHealth"]
    resources = ["arn:${data.aws_partition.current.partition}:autoscaling:${var.aws_region}:${data.aws_caller_identity.current.account_id}:autoScalingGroup:*:autoScalingGroupName/${local.name}-${each.key}"]
  }

  dynamic "statement" {
    # The roll controller (on the layer that runs the API): it completes the drain and ready
    # hooks of every group of the environment and starts a later layer's instance refresh once
    # the earlier layers run their new templates (kubeplat/node/roller.py).
    for_each = each.key == local.api_layer ? [1] : []
    content {
      sid       = "RollTheLayers"
      actions   = ["autoscaling:CompleteLifecycleAction", "autoscaling:StartInstanceRefresh"]
      resources = [for layer in local.layers : "arn:${data.aws_partition.current.partition}:autoscaling:${var.aws_region}:${data.aws_caller_identity.current.account_id}:autoScalingGroup:*:autoScalingGroupName/${local.name}-${layer}"]
    }
  }

  dynamic "statement" {
    # What the roll controller reads (calls that support no resource-level restriction).
    for_each = each.key == local.api_layer ? [1] : []
    content {
      sid       = "ReadTheRolls"
      actions   = ["autoscaling:DescribeInstanceRefreshes", "ec2:DescribeLaunchTemplateVersions"]
      resources = ["*"]
    }
  }

  dynamic "statement" {
    # The roll controller sees `kubeplat roll`'s requests by listing ENV/rolls/ (each object's
    # time is the request's); it reads none of them.
    for_each = each.key == local.api_layer ? [1] : []
    content {
      sid       = "SeeRollRequests"
      actions   = ["s3:ListBucket"]
      resources = [local.bucket_arn]
      condition {
        test     = "StringEquals"
        variable = "s3:prefix"
        values   = ["${var.environment}/rolls/"]
      }
    }
  }

  dynamic "statement" {
    # The pinned binaries, when the environment's artifact mirror is a bucket.
    for_each = length(local.mirror_arns) > 0 ? [1] : []
    content {
      sid       = "ReadArtifactMirror"
      actions   = ["s3:GetObject"]
      resources = local.mirror_arns
    }
  }

  statement {
    sid     = "NeverLocked"
    effect  = "Deny"
    actions = ["s3:*"]
    # pki-staging/: a new PKI (its CA keys too) is written there before it is published.
    resources = [
      "${local.bucket_arn}/${var.environment}/pki/locked/*",
      "${local.bucket_arn}/${var.environment}/pki-staging/*",
    ]
  }

  dynamic "statement" {
    # etcd members find each other, and control-plane nodes take turns restarting, through the
    # EC2 and Auto Scaling APIs (read-only calls that support no resource-level restriction).
    for_each = each.key != "compute" ? [1] : []
    content {
      sid = "Discovery"
      actions = [
        "ec2:DescribeInstances",
        "autoscaling:DescribeAutoScalingInstances",
        "autoscaling:DescribeAutoScalingGroups",
        "autoscaling:DescribeLifecycleHooks",
      ]
      resources = ["*"]
    }
  }

  dynamic "statement" {
    # The cloud controller manager's, on the layer that runs the API (local.ccm_statements).
    for_each = var.cloud_controller_manager && each.key == local.api_layer ? local.ccm_statements : {}
    content {
      sid       = statement.key
      actions   = statement.value.actions
      resources = statement.value.resources

      dynamic "condition" {
        for_each = statement.value.condition.test == "" ? [] : [statement.value.condition]
        content {
          test     = condition.value.test
          variable = condition.value.variable
          values   = condition.value.values
        }
      }
    }
  }

  dynamic "statement" {
    # etcd's own objects, for the secure layer only (local.etcd_statements).
    for_each = { for sid, s in local.etcd_statements : sid => s if each.key == "secure" }
    content {
      sid       = statement.key
      actions   = statement.value.actions
      resources = statement.value.resources

      dynamic "condition" {
        for_each = statement.value.prefix == null ? [] : [statement.value.prefix]
        content {
          test     = "StringLike"
          variable = "s3:prefix"
          values   = [condition.value]
        }
      }
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
